"""The provider: what the FLUX API takes, answers and costs.

Owns the embedded OpenAPI documents and their prose rules (`registry`, `openapi/`,
`schema_errors`), the generation client and its retry decisions (`client`), the answers'
shapes (`responses`), a delivered image's format and size (`images`), input images as a body
refers to them (`inputs`), the price table (`prices`), the limits in flight and the request
rate (`limits`, `pacing`), and the API key's redaction (`redaction`). The bottom stage: it may
import only the package's root (`errors`, `defaults`).
"""
