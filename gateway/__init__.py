"""The aiohttp gateway: routes per surface, auth, validation, error mapping, OpenAPI. Never imports TensorFlow."""
