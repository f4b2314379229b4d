"""peftcompare: compare parameter-efficient fine-tuning methods on FLAN-T5, fairly and reproducibly."""
__version__ = "0.1.0"
