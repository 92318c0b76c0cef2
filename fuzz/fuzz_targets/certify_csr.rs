//! Certify's checks (`controller/src/identity/certify.rs`): the requested
//! identity and the CSR (DER, from any workload that can reach the
//! controller), then signing with the issuer. The input is the identity,
//! a NUL byte, then the CSR; without a NUL the whole input is the CSR for
//! a fixed identity. A signed leaf must carry exactly the requested
//! identity.
#![no_main]

use conduit_controller::identity::Certifier;
use conduit_controller::identity::Issuer;
use conduit_controller::model::{TokenError, TokenVerifier};
use conduit_fuzz::runtime;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Accepts every token: the fuzzing is about the bytes, not the token.
struct AnyToken;

impl TokenVerifier for AnyToken {
    async fn verify(&self, _: &str, _: &str, _: &str) -> Result<(), TokenError> {
        Ok(())
    }
}

const IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/web";

fn certifier() -> &'static Certifier<AnyToken> {
    static C: OnceLock<Certifier<AnyToken>> = OnceLock::new();
    C.get_or_init(|| {
        let issuer = Issuer::generate(
            "cluster.local",
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(10 * 365 * 86400),
        )
        .expect("an issuer");
        Certifier::new(
            issuer,
            AnyToken,
            "cluster.local".parse().unwrap(),
            Duration::from_secs(86400),
        )
    })
}

fuzz_target!(|input: &[u8]| {
    let (identity, csr) = match input.iter().position(|b| *b == 0) {
        Some(i) => match std::str::from_utf8(&input[..i]) {
            Ok(id) => (id, &input[i + 1..]),
            Err(_) => return,
        },
        None => (IDENTITY, input),
    };
    let res = runtime().block_on(certifier().certify(identity, "token", csr));
    match res {
        Ok(signed) => {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let (_, cert) = X509Certificate::from_der(&signed.leaf_der).expect("the leaf parses");
            let san = cert
                .subject_alternative_name()
                .expect("SAN readable")
                .expect("SAN present");
            assert_eq!(san.value.general_names.len(), 1);
            assert_eq!(
                san.value.general_names[0],
                x509_parser::extensions::GeneralName::URI(identity)
            );
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
});
