//! Proxy side of registration with the node agent.
