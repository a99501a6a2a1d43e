//! Classifying failures of the inner service.

use std::error::Error as StdError;
use std::io;

/// `err` and its sources, outermost first.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// A failure of Rudder's own connectors: the TCP connect, or the TLS handshake.
fn connector_failed(e: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "tls")]
    if e.is::<crate::tls::TlsError>() {
        return true;
    }
    e.is::<crate::client::ConnectError>()
}

/// Whether `err` shows the request never reached an application: the connection was
/// refused or could not be made, or it was closed or reset before any response. Such a
/// request is safe to send to another endpoint if it is idempotent.
pub(crate) fn never_reached_application(err: &(dyn StdError + 'static)) -> bool {
    for e in chain(err) {
        if connector_failed(e) {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
            );
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_canceled() || h.is_incomplete_message())
        {
            return true;
        }
    }
    false
}

/// Whether `err` shows the connection to the endpoint was never made (refused, or the
/// connector failed): then no application saw the request, whatever its method.
pub(crate) fn never_connected(err: &(dyn StdError + 'static)) -> bool {
    for e in chain(err) {
        if connector_failed(e) {
            return true;
        }
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return legacy.is_connect();
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::ConnectionRefused;
        }
    }
    false
}

/// A likely cause of `err` worth telling the user, if one is recognised: a Pod that
/// answered a plain-HTTP request with something that is not HTTP most likely serves TLS.
pub(crate) fn hint(err: &(dyn StdError + 'static), https: bool) -> Option<&'static str> {
    let not_http = chain(err).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
    });
    (not_http && !https)
        .then_some("the Pod did not answer in HTTP: if it serves TLS, use an https:// URL")
}
