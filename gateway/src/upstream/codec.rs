//! The codecs of the gateway's gRPC calls: requests known only by descriptor, answers decoded
//! or kept as bytes, and the change feed's small-buffered prost codec.

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::pb;

/// The change feed's codec: prost's, with a read buffer of 512 bytes instead of tonic's 8 KiB.
/// A session's feed lasts as long as its stream, and an event is a few hundred bytes, so the
/// default buffer would be most of what a held stream costs; the buffer grows for a larger event.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FeedCodec;

const FEED_BUFFER_BYTES: usize = 512;

impl Codec for FeedCodec {
    type Encode = pb::WatchChangesRequest;
    type Decode = pb::ChangeEvent;
    type Encoder = tonic_prost::ProstEncoder<pb::WatchChangesRequest>;
    type Decoder = tonic_prost::ProstDecoder<pb::ChangeEvent>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        // The yield threshold only matters to an encoder; tonic's default is passed on.
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::new(FEED_BUFFER_BYTES, 32 * 1024))
    }
}

/// `application/grpc+proto` for requests known only by descriptor (any
/// `DynamicMessage`), with answers read by `D`: decoded into their message
/// type ([`DynamicDecoder`]) or kept as bytes for the tool's [`OutputEncoder`],
/// which writes them as JSON without a message in between ([`RawDecoder`]).
#[derive(Debug, Clone)]
pub(crate) struct DynamicCodec<D> {
    decoder: D,
}

impl DynamicCodec<DynamicDecoder> {
    pub(crate) fn new(decode_as: MessageDescriptor) -> Self {
        DynamicCodec { decoder: DynamicDecoder { decode_as } }
    }
}

impl DynamicCodec<RawDecoder> {
    pub(super) fn raw() -> Self {
        DynamicCodec { decoder: RawDecoder }
    }
}

impl<D> Codec for DynamicCodec<D>
where
    D: Decoder<Error = Status> + Clone + Send + 'static,
    D::Item: Send + 'static,
{
    type Encode = DynamicMessage;
    type Decode = D::Item;
    type Encoder = DynamicEncoder;
    type Decoder = D;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.decoder.clone()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        // The buffer grows on demand, so this cannot run out of space; the
        // error is mapped anyway rather than trusted away.
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DynamicDecoder {
    decode_as: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // INTERNAL, as tonic's own prost codec does for a malformed message.
        DynamicMessage::decode(self.decode_as.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the response: {e}")))
    }
}
