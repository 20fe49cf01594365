"""gRPC for every service: the server bootstrap (``server``), the error interceptor and the mapping of the
error hierarchy to status codes (``errors``), handler wrapping shared by the interceptors (``wrapping``)
and the internal-token authentication of calls between services (``internal_auth``)."""
