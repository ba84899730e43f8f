"""The spec language: a YAML spec made into frozen, validated requests.

Owns loading (`spec`, `yaml_lines`: safe YAML with the line of every node), the Jinja sandbox
(`render`), a job's combinations (`matrix`), requests and their seeds (`expansion`), the body
hash (`bodies`) and every request checked against its model (`validation`). No network, no
files written. May import `provider` (the models' schemas, input-image references) and the
package's root (`errors`, `defaults`); nothing above it.
"""
