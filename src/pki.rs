//! Cluster PKI: CAs, serving and client certificates, join tokens.
