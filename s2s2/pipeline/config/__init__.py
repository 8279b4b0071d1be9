"""Pydantic configuration models. Every default of the project lives in these modules."""
