//! `conduit-ebpf status --json`, read with the types the agent writes it
//! with (`conduit-ebpf-status`, as docs/ebpf.md documents it), and the
//! look-ups the tests make in it.

pub use conduit_ebpf_status::{
    CounterStatus, Feature, MapStatus, PodStatus, ProgramStatus, Status,
};

/// What the tests look up in a [`Status`].
pub trait StatusExt {
    /// The pod called `name`, if enrolled.
    fn pod(&self, name: &str) -> Option<&PodStatus>;
    /// The value of counter `program`/`outcome` (0 when not listed).
    fn counter(&self, program: &str, outcome: &str) -> u64;
    /// Names of the enrolled pods, sorted.
    fn pod_names(&self) -> Vec<&str>;
}

impl StatusExt for Status {
    fn pod(&self, name: &str) -> Option<&PodStatus> {
        self.pods.iter().find(|p| p.name == name)
    }

    fn counter(&self, program: &str, outcome: &str) -> u64 {
        self.counters
            .iter()
            .filter(|c| c.program == program && c.outcome == outcome)
            .map(|c| c.value)
            .sum()
    }

    fn pod_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
        v.sort_unstable();
        v
    }
}
