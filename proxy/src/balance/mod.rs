//! Load balancing over a destination's endpoints: power of two choices over
//! peak-EWMA latency, failure accrual, and a retry budget.
