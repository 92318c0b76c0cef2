//! The `Identity` gRPC service over a [`Certifier`].

use super::certify::Certifier;
use crate::metrics::Metrics;
use crate::model::TokenVerifier;
use conduit_controller_api::identity::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct IdentityService<V> {
    certifier: Arc<Certifier<V>>,
    metrics: Arc<Metrics>,
}

impl<V: TokenVerifier> IdentityService<V> {
    pub fn new(certifier: Arc<Certifier<V>>, metrics: Arc<Metrics>) -> Self {
        IdentityService { certifier, metrics }
    }
}

#[tonic::async_trait]
impl<V: TokenVerifier> pb::identity_server::Identity for IdentityService<V> {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let req = request.into_inner();
        match self
            .certifier
            .certify(&req.identity, &req.token, &req.certificate_signing_request)
            .await
        {
            Ok(signed) => {
                self.metrics.certify_result("ok");
                tracing::info!(identity = %req.identity, "certificate issued");
                Ok(Response::new(pb::CertifyResponse {
                    leaf_certificate: signed.leaf_der,
                    intermediate_certificates: signed.chain,
                    valid_until: Some(prost_types::Timestamp::from(signed.not_after)),
                }))
            }
            Err(e) => {
                let status = Status::from(e);
                self.metrics.certify_result(code_label(status.code()));
                tracing::warn!(identity = %req.identity, code = ?status.code(), "certificate refused: {}", status.message());
                Err(status)
            }
        }
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument => "invalid_argument",
        Unauthenticated => "unauthenticated",
        PermissionDenied => "permission_denied",
        FailedPrecondition => "failed_precondition",
        Unavailable => "unavailable",
        _ => "internal",
    }
}
