// Decoders of a tokenizer.json ("decoder"), in two forms that must agree:
//  * batch: `decode_chain` over the whole token list, written to mirror HF `Decoder::decode_chain`
//    literally (ByteLevel joins everything into one lossy UTF-8 string, ByteFallback turns a run of
//    <0xXX> tokens into one string or one U+FFFD per byte, Fuse joins, Strip and Metaspace act per
//    token, ...);
//  * streaming: a chain of stages fed one token at a time that emit text as soon as no later token
//    can change it, so streamed output concatenates to exactly the batch result.
// Stages talk through TokenSink: `append` adds text to the current token, `end_token` closes it,
// `finish` ends the stream. A stage holds back only what a later token could still alter: an
// incomplete UTF-8 sequence (ByteLevel), an open run of byte tokens (ByteFallback: one invalid byte
// later turns the whole run into U+FFFDs), a partial Replace pattern, trailing Strip characters.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace specula::text {

class TokenSink {
 public:
  virtual ~TokenSink() = default;
  virtual void append(std::string_view text) = 0;
  virtual void end_token() = 0;
  virtual void finish() = 0;
};

class StreamStage : public TokenSink {
 public:
  void connect(TokenSink* next) { next_ = next; }

 protected:
  TokenSink* next_ = nullptr;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Appends this decoder's streaming stages (a Sequence appends several) to `stages`.
  virtual void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const = 0;
  // One token decoded alone, with the bytes it stands for kept as they are: ByteLevel and
  // ByteFallback give the token's raw bytes even when they are part of a UTF-8 character
  // (decode_chain would turn them into U+FFFD). What per-token logprobs report. The default
  // runs decode_chain on the one token.
  virtual void decode_token_bytes(std::string& token) const;
};
// `nesting`: how many Sequences enclose `spec` (at most json_fields::kMaxComponentNesting).
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec, const std::string& where, int nesting = 0);

// Stand-in when the file has no decoder: HF joins the tokens with single spaces.
std::unique_ptr<StreamStage> make_space_joiner_stage();

}  // namespace specula::text
