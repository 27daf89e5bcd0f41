//! Property tests of the frame decoder: arbitrary bytes never panic it, and
//! every outcome is a frame or a typed rejection.

use axum::extract::ws::Message;
use interop_edge::ws::{classify, Incoming};
use interop_proto::limits::MAX_FRAME_BYTES;
use interop_proto::v1::{server_frame, ClientFrame, RejectCode};
use proptest::prelude::*;
use prost::Message as _;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_a_frame_or_a_typed_rejection(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match classify(Some(Ok(Message::Binary(bytes.clone().into())))) {
            Incoming::Frame(f) => {
                // What decodes must re-encode to something that decodes the same.
                let again = ClientFrame::decode(f.encode_to_vec().as_slice()).unwrap();
                prop_assert_eq!(again, f);
            }
            Incoming::Reject(r) => {
                let Some(server_frame::Frame::Rejected(r)) = r.frame else {
                    return Err(TestCaseError::fail("a reject without Rejected"));
                };
                prop_assert_eq!(r.code(), RejectCode::MalformedFrame);
            }
            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        body in "[a-z]{1,40}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let env = interop_proto::v1::Envelope {
            client_message_id: "c".into(),
            from: "signal:alice".into(),
            to: "home:+4915112345678".into(),
            encryption: 2,
            content: Some(interop_proto::v1::envelope::Content::Text(interop_proto::v1::Text { body })),
            ..Default::default()
        };
        let mut bytes = ClientFrame {
            request_id: 1,
            frame: Some(interop_proto::v1::client_frame::Frame::Send(interop_proto::v1::Send { envelope: Some(env) })),
        }
        .encode_to_vec();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        let out = classify(Some(Ok(Message::Binary(bytes.into()))));
        prop_assert!(matches!(out, Incoming::Frame(_) | Incoming::Reject(_)));
    }
}

#[test]
fn size_limit_edges() {
    let at = classify(Some(Ok(Message::Binary(vec![0u8; MAX_FRAME_BYTES].into()))));
    assert!(
        matches!(at, Incoming::Reject(ref r) if matches!(&r.frame, Some(server_frame::Frame::Rejected(x)) if x.code() == RejectCode::MalformedFrame))
    );
    let over = classify(Some(Ok(Message::Binary(
        vec![0u8; MAX_FRAME_BYTES + 1].into(),
    ))));
    assert!(
        matches!(over, Incoming::Reject(ref r) if matches!(&r.frame, Some(server_frame::Frame::Rejected(x)) if x.code() == RejectCode::FrameTooLarge))
    );
    assert!(matches!(
        classify(Some(Ok(Message::Text("x".into())))),
        Incoming::Close(1003, _)
    ));
    assert!(matches!(classify(None), Incoming::End));
}
