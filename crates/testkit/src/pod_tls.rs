//! TLS for test Pods: a throwaway CA, a serving certificate for a Service's DNS names, and
//! a client certificate for mutual TLS, all made fresh with rcgen.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::Error;

/// TLS material for Pods that serve a Service over TLS: a CA (give its PEM to clients), a
/// server certificate for the Service's names, and a client certificate the same CA signed
/// (for mutual TLS).
///
/// ```
/// let tls = rudder_testkit::PodTls::for_names(["hello-svc.default.svc"]).unwrap();
/// assert!(tls.ca_pem().contains("BEGIN CERTIFICATE"));
/// ```
#[derive(Clone)]
pub struct PodTls {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    ca_der: CertificateDer<'static>,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    server: Arc<ServerConfig>,
    require_client_cert: bool,
}

impl std::fmt::Debug for PodTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTls")
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

impl PodTls {
    /// A fresh CA and a server certificate for `names` (DNS names, e.g.
    /// `hello-svc.default.svc`); clients are not asked for certificates.
    pub fn for_names<I>(names: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rudder-testkit-pod-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls_err)?)
            .map_err(tls_err)?;

        let mut params = CertificateParams::new(names.clone()).map_err(tls_err)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params.signed_by(&key, &ca).map_err(tls_err)?;

        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        client
            .distinguished_name
            .push(DnType::CommonName, "rudder-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(tls_err)?;
        let client_cert = client.signed_by(&client_key, &ca).map_err(tls_err)?;

        let ca_der = ca.der().clone();
        let cert_der = cert.der().clone();
        let key_der = key.serialize_der();
        let server = server_config(ca_der.clone(), cert_der.clone(), key_der.clone(), false)?;
        Ok(Self {
            ca_pem: ca.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der,
            cert_der,
            key_der,
            server,
            require_client_cert: false,
        })
    }

    /// The same material, with Pods that require a client certificate signed by the CA.
    pub fn require_client_cert(self) -> Result<Self, Error> {
        let server = server_config(
            self.ca_der.clone(),
            self.cert_der.clone(),
            self.key_der.clone(),
            true,
        )?;
        Ok(Self {
            server,
            require_client_cert: true,
            ..self
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate the CA signed, PEM (for mutual TLS).
    pub fn client_cert_pem(&self) -> &str {
        &self.client_cert_pem
    }

    /// The client certificate's private key, PEM (PKCS#8).
    pub fn client_key_pem(&self) -> &str {
        &self.client_key_pem
    }

    /// Whether Pods require a client certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}

/// The serving configuration: the certificate, ALPN h2 and http/1.1, and optionally client
/// certificates verified against the CA.
fn server_config(
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(tls_err)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(tls_err)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let mut config = builder.with_single_cert(vec![cert], key).map_err(tls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
