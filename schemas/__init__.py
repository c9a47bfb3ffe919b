"""Pydantic models for every wire object: API resources, queue messages, stored documents, errors."""
