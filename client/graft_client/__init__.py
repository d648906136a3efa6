"""Python SDK for the Graft model-adaptation service."""
