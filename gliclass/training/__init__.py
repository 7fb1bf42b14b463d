"""Training: LightningModules (supervised, PPO), losses wiring, metrics, optimiser groups, callbacks, LoRA.

Nothing is imported here, so `import gliclass.training.<module>` pulls in only what that module needs.
"""
