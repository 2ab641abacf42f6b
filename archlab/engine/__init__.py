"""Services every training loop uses: seeding, device and precision, checkpoints, metrics, progress,
optimizers and schedules, early stopping, distributed helpers, and the step driver that runs any
paradigm. No model code lives here."""
