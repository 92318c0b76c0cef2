//! `conduit_balancer_endpoints{dst, state}`: for each destination the proxy
//! balances, how many endpoints are in rotation (`available`) and how many
//! failure accrual has taken out (`unavailable`: dead, or being probed).
//! Read from the balancers at scrape time, so it costs nothing between
//! scrapes; `dst` is bounded like every other `dst` label.

use super::cache::Balancers;
use crate::metrics::DstLabels;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

#[derive(Debug)]
pub struct EndpointGauges {
    balancers: Arc<Balancers>,
    labels: Arc<DstLabels>,
}

impl EndpointGauges {
    pub fn new(balancers: Arc<Balancers>, labels: Arc<DstLabels>) -> Self {
        EndpointGauges { balancers, labels }
    }
}

impl Collector for EndpointGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counts = self.balancers.endpoint_counts();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "balancer_endpoints",
            "Endpoints of each balanced destination, in rotation (available) or taken out by failure accrual (unavailable)",
            None,
            gauge.metric_type(),
        )?;
        for (name, available, unavailable) in counts {
            let dst = self.labels.admit(&name);
            for (state, n) in [("available", available), ("unavailable", unavailable)] {
                let labels = [("dst", dst.as_str()), ("state", state)];
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
