"""The predictive coding method and what plugs into it: component records and protocols, hook
specifications, errors, the engine and its step plan, the weight optimiser and schedule, the plugin
registry, device names and size limits. Imports nothing else of pccore."""
