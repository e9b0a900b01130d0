"""Fleet operations from the operator's side: the inventory (`fleet ls`) and staged rollouts
(`fleet rollout`), over the agents' existing MQTT topics."""
