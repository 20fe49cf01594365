"""The prompt-parser service: the prompt language (``parser.parse_prompt``) behind gRPC ``PromptParser``."""
