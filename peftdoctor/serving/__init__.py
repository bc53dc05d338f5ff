"""Serving integrations: what an inference engine's plugin (vLLM resolver, SGLang hook) calls before it
loads an adapter. Engine-agnostic and light (no torch, transformers, peft, vllm or sglang imports):
`prepare` checks an adapter for the running engine release and hands back the directory to load (the
adapter itself, or an exact fixed copy from a cache) or a one-line refusal; `find_adapter` maps the
name a client asked for to an adapter directory. The plugins live beside this package."""
