//! ClientHellos built for tests: a body with chosen fields and extensions,
//! framed as a handshake message and cut into TLS records of any size.

/// The fields of a ClientHello body, well-formed by default (TLS 1.2
/// version, one cipher suite, null compression, no extensions).
#[derive(Debug, Clone)]
pub(super) struct Builder {
    pub(super) version: [u8; 2],
    pub(super) session_id: Vec<u8>,
    pub(super) suites: Vec<u8>,
    pub(super) compression: Vec<u8>,
    /// `None`: no extensions block at all (allowed before TLS 1.3).
    pub(super) extensions: Option<Vec<u8>>,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            version: [3, 3],
            session_id: vec![9; 32],
            suites: vec![0x13, 0x01],
            compression: vec![0],
            extensions: None,
        }
    }
}

impl Builder {
    /// Adds an extension of type `kind` holding `data` as it is.
    pub(super) fn ext(mut self, kind: u16, data: &[u8]) -> Builder {
        let block = self.extensions.get_or_insert_with(Vec::new);
        block.extend_from_slice(&kind.to_be_bytes());
        block.extend_from_slice(&vec16(data));
        self
    }

    /// Adds a server_name extension with one host_name entry.
    pub(super) fn sni(self, name: &str) -> Builder {
        self.sni_entries(&[(0, name.as_bytes())])
    }

    /// Adds a server_name extension with these (name type, name) entries.
    pub(super) fn sni_entries(self, entries: &[(u8, &[u8])]) -> Builder {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&vec16(name));
        }
        self.ext(0, &vec16(&list))
    }

    /// Adds an ALPN extension offering these protocols, in order.
    pub(super) fn alpn(self, protocols: &[&[u8]]) -> Builder {
        let mut list = Vec::new();
        for p in protocols {
            list.push(u8::try_from(p.len()).unwrap());
            list.extend_from_slice(p);
        }
        self.ext(16, &vec16(&list))
    }

    /// Adds a padding extension (21) of `n` zero bytes, to make the hello
    /// as big as a post-quantum one.
    pub(super) fn pad(self, n: usize) -> Builder {
        self.ext(21, &vec![0; n])
    }

    /// The body, after the handshake header.
    pub(super) fn body(&self) -> Vec<u8> {
        let mut body = self.version.to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(u8::try_from(self.session_id.len()).unwrap());
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&vec16(&self.suites));
        body.push(u8::try_from(self.compression.len()).unwrap());
        body.extend_from_slice(&self.compression);
        if let Some(block) = &self.extensions {
            body.extend_from_slice(&vec16(block));
        }
        body
    }

    /// The handshake message: type 1, a 24-bit length, the body.
    pub(super) fn message(&self) -> Vec<u8> {
        message(&self.body())
    }

    /// The message in records of at most `size` bytes each.
    pub(super) fn records(&self, size: usize) -> Vec<u8> {
        records(&self.message(), size)
    }
}

/// `body` framed as a ClientHello handshake message.
pub(super) fn message(body: &[u8]) -> Vec<u8> {
    let mut msg = vec![1];
    msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    msg
}

/// `message` cut into handshake records of at most `size` bytes each.
pub(super) fn records(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// `bytes` behind a two-byte length.
pub(super) fn vec16(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}
