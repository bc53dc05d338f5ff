"""Hooks that run peftdoctor inside an inference engine, before it loads an adapter."""
