//! TLS for the connections Vigil opens: to upstreams, to the identity provider, to the device
//! inventory.

/// Builds the TLS client configuration for upstreams from optional CA and client identity.
pub fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("upstream client certificate and key do not fit together: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// TLS for Vigil's own outbound calls (provider, inventory): trusting the CAs of a PEM bundle,
/// or the platform's when there is none. `what` names the setting in errors.
pub fn for_vigil(ca_pem: Option<&[u8]>, what: &str) -> Result<rustls::ClientConfig, String> {
    let roots = match ca_pem {
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("{what}: {e:?}"))?;
                roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
            }
            roots
        }
        None => system_roots(),
    };
    client_config(roots, None)
}

/// The platform's trust anchors, for `https://` upstreams without `upstream_ca`.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    roots
}
