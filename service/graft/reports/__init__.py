"""A model version's report: what the worker measures and draws when it registers the
version (figures, an HTML page, the same data as JSON), stored in the version's folder,
and served by GetModelReport. docs/REPORTS.md says what it holds and why.

The package imports nothing here: the API process reads reports through `files` (standard
library only) and must not load the worker's modules (torch, matplotlib) to do so.
"""
