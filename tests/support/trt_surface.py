"""The TensorRT 8.2 and 8.5 Python API surface that edge-agent and its TensorRT double use.

Written by reading NVIDIA/TensorRT's pybind11 sources at tags 8.2.1 (JetPack 4.6 ships 8.2.1)
and 8.5.3 (JetPack 5.1 ships 8.5.2; the bindings of both 8.5 releases declare these names):
python/src/infer/pyCore.cpp, pyGraph.cpp, pyInt8.cpp, pyPlugin.cpp, pyFoundationalTypes.cpp,
python/src/parsers/pyOnnx.cpp, and the pure-Python python/packaging/tensorrt/__init__.py.
Each entry lists what that class really has AND the double offers; a name later TensorRT
added (num_io_tensors in 8.5, IProgressMonitor in 10, ...) must not appear in an older list.
tests/unit/backends/test_trt_stubs.py checks the doubles against these lists in both directions, and
AGENT_USES against the agent's own code.
"""

SURFACE_82 = {
    # pyCore.cpp: `py::class_<IBuilder>(m, "Builder")` (build_engine is still there in 8.x)
    "Builder": {"build_engine", "build_serialized_network", "create_builder_config",
                "create_network", "create_optimization_profile", "num_DLA_cores",
                "platform_has_fast_fp16", "platform_has_fast_int8"},
    # pyCore.cpp: IBuilderConfig; 8.2 has max_workspace_size, no memory pools (8.4)
    "IBuilderConfig": {"add_optimization_profile", "clear_flag", "create_timing_cache",
                       "get_flag", "get_timing_cache", "int8_calibrator", "max_workspace_size",
                       "set_calibration_profile", "set_flag", "set_timing_cache"},
    # pyCore.cpp: ICudaEngine, binding API only (no num_io_tensors / get_tensor_*)
    "ICudaEngine": {"binding_is_input", "create_execution_context", "get_binding_dtype",
                    "get_binding_index", "get_binding_name", "get_binding_shape",
                    "has_implicit_batch_dimension", "max_batch_size", "num_bindings",
                    "num_layers", "num_optimization_profiles", "serialize"},
    # pyCore.cpp: IExecutionContext, execute_async_v2 (no execute_async_v3, no tensor addresses)
    "IExecutionContext": {"all_binding_shapes_specified", "engine", "execute_async_v2",
                          "execute_v2", "get_binding_shape", "profiler", "set_binding_shape"},
    # pyCore.cpp: `py::class_<IRuntime>(m, "Runtime")`
    "Runtime": {"DLA_core", "deserialize_cuda_engine", "num_DLA_cores"},
    # pyCore.cpp: ILogger (+ its Severity enum exported into the class scope) and Logger
    "ILogger": {"log", "Severity", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"},
    "Logger": {"log", "Severity", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"},
    # pyCore.cpp: IProfiler
    "IProfiler": {"report_layer_time"},
    # pyCore.cpp: ITimingCache, IHostMemory
    "ITimingCache": {"combine", "reset", "serialize"},
    "IHostMemory": {"nbytes"},
    # pyCore.cpp: IOptimizationProfile
    "IOptimizationProfile": {"get_shape", "set_shape"},
    # pyGraph.cpp: INetworkDefinition (only what the ONNX path touches), ITensor (properties
    # name/shape/dtype are set per instance in the double)
    "INetworkDefinition": {"get_input", "get_output", "num_inputs", "num_outputs"},
    "ITensor": set(),
    # pyInt8.cpp: IInt8Calibrator and IInt8EntropyCalibrator2
    "IInt8Calibrator": {"get_batch", "get_batch_size", "read_calibration_cache",
                        "write_calibration_cache"},
    "IInt8EntropyCalibrator2": {"get_algorithm", "get_batch", "get_batch_size",
                                "read_calibration_cache", "write_calibration_cache"},
    # pyOnnx.cpp: OnnxParser and ParserError
    "OnnxParser": {"clear_errors", "get_error", "num_errors", "parse"},
    "ParserError": {"code", "desc", "node"},
    # pyFoundationalTypes.cpp: Dims (tuple-like), DataType (no UINT8 before 8.5)
    "Dims": set(),
    "DataType": {"BOOL", "FLOAT", "HALF", "INT32", "INT8"},
    # pyCore.cpp enums
    "BuilderFlag": {"DEBUG", "DISABLE_TIMING_CACHE", "FP16", "GPU_FALLBACK", "INT8", "REFIT",
                    "SPARSE_WEIGHTS", "TF32"},
    "DeviceType": {"DLA", "GPU"},
    "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH", "EXPLICIT_PRECISION"},
}
# Module-level functions: init_libnvinfer_plugins (pyPlugin.cpp), nptype and volume
# (python/packaging/tensorrt/__init__.py).
MODULE_82 = {"init_libnvinfer_plugins", "nptype", "volume"}

# 8.5 = 8.2 + the tensor API and memory pools (pyCore.cpp at 8.5.3); the binding API,
# max_workspace_size and build_engine are still there (deprecated, removed in 10.0).
SURFACE_85 = dict(SURFACE_82)
SURFACE_85.update({
    "IBuilderConfig": SURFACE_82["IBuilderConfig"] | {"get_memory_pool_limit",
                                                      "set_memory_pool_limit"},
    "ICudaEngine": SURFACE_82["ICudaEngine"] | {"get_tensor_dtype", "get_tensor_mode",
                                                "get_tensor_name", "get_tensor_profile_shape",
                                                "get_tensor_shape", "num_io_tensors"},
    "IExecutionContext": SURFACE_82["IExecutionContext"] | {
        "execute_async_v3", "get_tensor_address", "get_tensor_shape", "set_input_shape",
        "set_tensor_address"},
    "DataType": SURFACE_82["DataType"] | {"UINT8"},  # pyFoundationalTypes.cpp at 8.5.3
    # pyCore.cpp at 8.5.3: no TACTIC_DRAM yet (8.6)
    "MemoryPoolType": {"WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"},
    "TensorIOMode": {"NONE", "INPUT", "OUTPUT"},
})
MODULE_85 = set(MODULE_82)

# What agent/backends/tensorrt/*.py touch, per generation (read from the code;
# test_trt_stubs.py checks each is in the surface above).
AGENT_USES_82 = {
    "Builder": {"build_serialized_network", "create_builder_config", "create_network",
                "create_optimization_profile", "num_DLA_cores", "platform_has_fast_fp16",
                "platform_has_fast_int8"},
    "IBuilderConfig": {"add_optimization_profile", "create_timing_cache", "get_timing_cache",
                       "int8_calibrator", "max_workspace_size", "set_calibration_profile",
                       "set_flag", "set_timing_cache"},
    "ICudaEngine": {"binding_is_input", "create_execution_context", "get_binding_dtype",
                    "get_binding_name", "get_binding_shape", "num_bindings"},
    "IExecutionContext": {"execute_async_v2", "get_binding_shape", "profiler",
                          "set_binding_shape"},
    "Runtime": {"DLA_core", "deserialize_cuda_engine", "num_DLA_cores"},
    "ILogger": {"log", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO"},
    "IProfiler": {"report_layer_time"},
    "OnnxParser": {"get_error", "num_errors", "parse"},
    "ParserError": {"desc", "node"},
    "INetworkDefinition": {"get_input", "num_inputs"},
    "IOptimizationProfile": {"set_shape"},
    "ITimingCache": {"serialize"},
    "IInt8EntropyCalibrator2": {"get_batch", "get_batch_size", "read_calibration_cache",
                                "write_calibration_cache"},
    "BuilderFlag": {"FP16", "INT8", "GPU_FALLBACK"},
    "DeviceType": {"DLA"},
    "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH"},
}
AGENT_USES_85 = dict(AGENT_USES_82)
AGENT_USES_85.update({
    "IBuilderConfig": (AGENT_USES_82["IBuilderConfig"] - {"max_workspace_size"}) |
    {"set_memory_pool_limit"},
    "ICudaEngine": {"create_execution_context", "get_tensor_dtype", "get_tensor_mode",
                    "get_tensor_name", "get_tensor_shape", "num_io_tensors"},
    "IExecutionContext": {"execute_async_v3", "get_tensor_shape", "profiler", "set_input_shape",
                          "set_tensor_address"},
    "MemoryPoolType": {"WORKSPACE"},
    "TensorIOMode": {"INPUT"},
})
AGENT_MODULE = {"init_libnvinfer_plugins", "nptype"}
