"""The aiohttp gateway: routes, auth, validation, error mapping, OpenAPI. Never imports TensorFlow."""
