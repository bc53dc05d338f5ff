"""Engine plugins: the code an inference engine loads from peftdoctor through its own plugin hook
(vLLM's `vllm.general_plugins` entry point, vllm.py; SGLang's `sglang.srt.plugins`, sglang.py). Each stays thin:
the engine's types in, the engine-agnostic serving.prepare called, the engine's answer out. Importing this
package imports no engine; each plugin imports its engine only when the engine calls it."""
