//! Classifying failures of the inner service.

use std::error::Error as StdError;
use std::io;

/// Whether `err` shows the request never reached an application: the connection was
/// refused or could not be made, or it was closed or reset before any response. Such a
/// request is safe to send to another endpoint.
pub(crate) fn never_reached_application(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<crate::client::ConnectError>() {
            return true;
        }
        #[cfg(feature = "tls")]
        if e.is::<crate::tls::TlsError>() {
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
        cur = e.source();
    }
    false
}

/// Whether `err` shows the connection to the endpoint was never made (refused, or the
/// connector failed): then no application saw the request, whatever its method.
pub(crate) fn never_connected(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<crate::client::ConnectError>() {
            return true;
        }
        #[cfg(feature = "tls")]
        if e.is::<crate::tls::TlsError>() {
            return true;
        }
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return legacy.is_connect();
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::ConnectionRefused;
        }
        cur = e.source();
    }
    false
}

/// A likely cause of `err` worth telling the user, if one is recognised: a Pod that
/// answered a plain-HTTP request with something that is not HTTP most likely serves TLS.
pub(crate) fn hint(err: &(dyn StdError + 'static), https: bool) -> Option<&'static str> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_parse()
            && !https
        {
            return Some("the Pod did not answer in HTTP: if it serves TLS, use an https:// URL");
        }
        cur = e.source();
    }
    None
}
