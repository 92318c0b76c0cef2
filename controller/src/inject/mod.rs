//! Sidecar injection: adds the conduit proxy to workload YAML.
