//! Protobuf descriptors to JSON Schema (2020-12), with descriptions from the
//! proto comments. (Being written: see the upstream brief.)
