//! The request head a retry is rebuilt from, copied into reused buffers.
//!
//! A request that may be retried keeps its head, because the inner service consumes the
//! request. Cloning the head (`HeaderMap::clone`, `Uri::clone`) allocates on every
//! request: the map's two arrays, and the `bytes` of the URI and of each header made from
//! a string, which `bytes` moves to a shared buffer the first time they are cloned. Yet a
//! retry is rare, and a copy is only read when one happens. So the head is copied as
//! bytes into buffers that are reused from request to request (a small free list per
//! thread), and parsed back into a request only for a retry. On the steady path that is
//! a few short copies and no allocation; a request that carries extensions pays for a
//! copy of them (`http::Extensions` offers nothing cheaper), one without pays nothing.
//!
//! A thread keeps as many spare copies as it had requests in flight at once, so a busy
//! client reuses them too, up to [`SPARE_PER_THREAD`] copies and [`SPARE_TOTAL`] bytes,
//! and none whose buffers grew past [`SPARE_BYTES`] (a request with huge headers): beyond
//! that, copies are allocated and freed, and the free list stays bounded.

use std::cell::RefCell;
use std::ops::Range;

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

/// Spare copies kept per thread, at most.
const SPARE_PER_THREAD: usize = 1024;

/// Bytes of spare copies kept per thread, at most.
const SPARE_TOTAL: usize = 1024 * 1024;

/// A copy whose buffers hold more than this many bytes is dropped, not kept spare.
const SPARE_BYTES: usize = 16 * 1024;

/// One thread's spare copies.
struct Spare {
    // Boxed: a copy lives in the response future as one pointer, moved in and out of
    // the free list as is.
    #[allow(clippy::vec_box)]
    copies: Vec<Box<Buffers>>,
    /// The copies' bytes ([`Buffers::size`]).
    bytes: usize,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            copies: Vec::new(),
            bytes: 0,
        })
    };
}

/// A request head, copied; see the [module docs](self).
pub(crate) struct KeptHead {
    /// `None` only once dropped (the buffers went back to the free list).
    buffers: Option<Box<Buffers>>,
}

#[derive(Default)]
struct Buffers {
    method: Method,
    version: Version,
    /// The URI as written (`scheme://authority/path?query`, or the path alone).
    uri: String,
    /// Every header name and value, back to back.
    bytes: Vec<u8>,
    /// Per header, in order: its name's and its value's ranges in `bytes`.
    headers: Vec<(Range<usize>, Range<usize>, bool)>,
    extensions: Extensions,
}

impl Buffers {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.uri.capacity()
            + self.bytes.capacity()
            + self.headers.capacity() * std::mem::size_of::<(Range<usize>, Range<usize>, bool)>()
    }
}

impl KeptHead {
    /// Copies `req`'s head: method, URI, version, headers and extensions.
    pub(crate) fn copy<B>(req: &Request<B>) -> Self {
        let mut b = SPARE
            .try_with(|s| {
                let mut s = s.borrow_mut();
                let b = s.copies.pop()?;
                s.bytes -= b.size();
                Some(b)
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        b.method.clone_from(req.method());
        b.version = req.version();
        let uri = req.uri();
        if let Some(scheme) = uri.scheme_str() {
            b.uri.push_str(scheme);
            b.uri.push_str("://");
        }
        if let Some(authority) = uri.authority() {
            b.uri.push_str(authority.as_str());
        }
        if let Some(pq) = uri.path_and_query() {
            b.uri.push_str(pq.as_str());
        }
        for (name, value) in req.headers() {
            let start = b.bytes.len();
            b.bytes.extend_from_slice(name.as_str().as_bytes());
            let middle = b.bytes.len();
            b.bytes.extend_from_slice(value.as_bytes());
            let end = b.bytes.len();
            b.headers
                .push((start..middle, middle..end, value.is_sensitive()));
        }
        // An empty map clones without allocating.
        b.extensions.clone_from(req.extensions());
        Self { buffers: Some(b) }
    }

    /// The request again, with `body`. Parsing what was copied from a valid request
    /// succeeds; should it not, the error says which part failed.
    pub(crate) fn request<B>(&self, body: B) -> Result<Request<B>, http::Error> {
        let b = self.buffers.as_deref().expect("kept until dropped");
        let mut headers = HeaderMap::with_capacity(b.headers.len());
        for (name, value, sensitive) in &b.headers {
            let name = HeaderName::from_bytes(&b.bytes[name.clone()])?;
            let mut value = HeaderValue::from_bytes(&b.bytes[value.clone()])?;
            value.set_sensitive(*sensitive);
            headers.append(name, value);
        }
        let mut req = Request::new(body);
        *req.method_mut() = b.method.clone();
        *req.uri_mut() = Uri::try_from(b.uri.as_str())?;
        *req.version_mut() = b.version;
        *req.headers_mut() = headers;
        *req.extensions_mut() = b.extensions.clone();
        Ok(req)
    }
}

impl Drop for KeptHead {
    fn drop(&mut self) {
        let Some(mut b) = self.buffers.take() else {
            return;
        };
        let size = b.size();
        if size > SPARE_BYTES {
            return;
        }
        b.uri.clear();
        b.bytes.clear();
        b.headers.clear();
        b.extensions.clear();
        // The thread may be exiting: then the copy is simply dropped.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.copies.len() < SPARE_PER_THREAD && s.bytes + size <= SPARE_TOTAL {
                s.bytes += size;
                s.copies.push(b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_copies_are_bounded_in_bytes() {
        // Heads of 8 KiB, a thousand in flight at once: the byte bound holds first.
        let big = Request::get("http://web:8080/x")
            .header("x-big", "a".repeat(8 * 1024))
            .body(())
            .expect("request");
        let heads: Vec<_> = (0..1000).map(|_| KeptHead::copy(&big)).collect();
        drop(heads);
        let (copies, bytes) = SPARE.with(|s| {
            let s = s.borrow();
            (s.copies.len(), s.bytes)
        });
        assert!(bytes <= SPARE_TOTAL, "{bytes} bytes");
        assert!((64..=128).contains(&copies), "{copies} copies of 8 KiB");
        // The count matches what the list holds.
        let held: usize = SPARE.with(|s| s.borrow().copies.iter().map(|b| b.size()).sum());
        assert_eq!(held, bytes);
    }

    #[test]
    fn a_kept_head_gives_the_same_request_back() {
        let mut req = Request::post("https://web.default:8443/a/b?c=d&e")
            .version(Version::HTTP_2)
            .header("x-one", "1")
            .header("x-many", "a")
            .header("x-many", "b")
            .header(http::header::AUTHORIZATION, "Bearer secret")
            .body(())
            .expect("request");
        req.headers_mut()
            .get_mut(http::header::AUTHORIZATION)
            .expect("header")
            .set_sensitive(true);
        req.extensions_mut().insert(7u32);
        let kept = KeptHead::copy(&req);
        let again = kept.request("body").expect("rebuilt");
        assert_eq!(again.method(), Method::POST);
        assert_eq!(again.uri(), req.uri());
        assert_eq!(again.version(), Version::HTTP_2);
        assert_eq!(again.headers(), req.headers());
        let many: Vec<_> = again.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["a", "b"]);
        assert!(again.headers()[http::header::AUTHORIZATION].is_sensitive());
        assert_eq!(again.extensions().get::<u32>(), Some(&7));
        assert_eq!(*again.body(), "body");
    }

    #[test]
    fn origin_form_and_odd_methods_survive() {
        let req = Request::builder()
            .method(Method::from_bytes(b"PURGE").expect("method"))
            .uri("/only/a/path?q")
            .body(())
            .expect("request");
        let again = KeptHead::copy(&req).request(()).expect("rebuilt");
        assert_eq!(again.method().as_str(), "PURGE");
        assert_eq!(again.uri(), "/only/a/path?q");
        assert!(again.headers().is_empty());
    }

    #[test]
    fn copies_are_reused_and_the_free_list_is_bounded() {
        let req = Request::get("http://web/x").body(()).expect("request");
        let kept: Vec<KeptHead> = (0..SPARE_PER_THREAD + 10)
            .map(|_| KeptHead::copy(&req))
            .collect();
        drop(kept);
        assert_eq!(SPARE.with(|s| s.borrow().copies.len()), SPARE_PER_THREAD);
        // A copy taken now is a spare one, emptied.
        let kept = KeptHead::copy(&req);
        assert_eq!(
            SPARE.with(|s| s.borrow().copies.len()),
            SPARE_PER_THREAD - 1
        );
        assert_eq!(
            kept.buffers.as_ref().map(|b| b.uri.as_str()),
            Some("http://web/x")
        );
        drop(kept);
        // One with huge headers is not kept spare.
        let big = Request::get("http://web/x")
            .header("x-big", "a".repeat(SPARE_BYTES))
            .body(())
            .expect("request");
        let before = SPARE.with(|s| s.borrow().copies.len());
        drop(KeptHead::copy(&big));
        assert_eq!(SPARE.with(|s| s.borrow().copies.len()), before - 1);
    }
}
