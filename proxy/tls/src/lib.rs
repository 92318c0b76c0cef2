//! Proxy identity and mutual TLS between conduit proxies.
