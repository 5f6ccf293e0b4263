"""personal_nlf: personalized LLMs on LaMP-QA, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
