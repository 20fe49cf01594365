"""The application layer: what each request and each consumed message does, from the domain and the stores."""
