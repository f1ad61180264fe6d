"""The operators' console (/admin/) and the admin JSON API (/api/v1/): pages, API,
OpenAPI document, and the traces of sends they show."""
