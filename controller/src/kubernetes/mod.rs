//! Kubernetes backend: discovery from Services, EndpointSlices and Pods
//! (kube-rs reflectors), and token checks through TokenReview.
