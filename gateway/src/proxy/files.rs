//! pingora's rendering of a `static` route's answer
//! ([`FileReply`](crate::pipeline::statics::FileReply)): the head with the
//! pipeline's edits, then the body: small files as one write, larger ones
//! streamed from the open handle chunk by chunk, never read whole.

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::fields;
use crate::files::{self, Body};
use crate::head;
use crate::pipeline::statics::FileReply;

pub async fn write(session: &mut Session, reply: FileReply) -> Result<()> {
    let FileReply {
        status,
        fields: own,
        mut edits,
        body,
    } = reply;
    let mut resp = ResponseHeader::build(status, Some(own.len() + edits.len() + 1))?;
    for (n, v) in own {
        resp.append_header(n, v)?;
    }
    head::edit_response(&mut resp, 1, |h| fields::apply(h, &mut edits))?;
    if status != 304 {
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let end = head_only || body.is_empty();
    session.write_response_header(Box::new(resp), end).await?;
    if end {
        return Ok(());
    }
    match body {
        Body::Empty => Ok(()),
        Body::Bytes(b) => session.write_response_body(Some(b), true).await,
        Body::File { file, offset, len } => {
            let mut sent = 0;
            while sent < len {
                let want = (len - sent).min(files::CHUNK);
                let chunk = files::read_chunk(&file, offset + sent, want)
                    .await
                    .or_err(ErrorType::ReadError, "reading a static file")?;
                if chunk.is_empty() {
                    // The file shrank after its length was sent: the
                    // response cannot be completed; the connection closes.
                    return Error::e_explain(ErrorType::ReadError, "static file shrank");
                }
                sent += chunk.len() as u64;
                session
                    .write_response_body(Some(chunk), sent >= len)
                    .await?;
            }
            Ok(())
        }
    }
}
