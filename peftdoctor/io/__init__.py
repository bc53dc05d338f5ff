"""Everything that touches the file system or the Hub: the file rules, reading an adapter and a base once,
safetensors headers and values, atomic rewrites and what killed runs leave behind."""
