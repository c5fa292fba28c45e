"""The core: what every process of engram-memory agrees on, importing nothing else of the project.

    config, geometry    EngramConfig (the reference's fields, presets) and where each layer's rows are
    tokenizer           the reference's tokenizer compression, cached on disk
    row_format          a row's bytes for each row dtype (fp8 with ue8m0 scales)
    table_init          the seeded random rows every test, loader and local table share
    manifest, errors    a table version's description; the one error type of bad requests and stores
    store, reader       the table format on disk (LMDB) and its vectorized read path, with
                        chunk_map, row_check, environment and huge_pages
    row_ids             row ids checked against a table and deduplicated
    wire, segment_protocol, credentials, cluster
                        what a client and a server agree on: hand-written LookupResponse bytes, the
                        shared-memory handover, bearer tokens, the shard map
    flags, logs, malloc, corpus
                        flags derived from config dataclasses, JSON logs, glibc buffers, real text

memory_service/ and model_client/ depend on this package (and protos/), never on each other.
"""
