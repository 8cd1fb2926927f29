//! Byte-level and property tests of parsing and rewriting.
