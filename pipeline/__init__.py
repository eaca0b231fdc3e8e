"""The whole pipeline in one command: pretraining → Siamese fine-tuning → evaluation → app."""
