// server::HttpServer in process over an engine that speculates (the fixture target with its EAGLE
// head; texts through the demo model's tokenizer, whose ids all lie inside the target's vocabulary).
// The rule of engine::Scheduler seen from a client: a request without logprobs runs on the
// speculative decoder and the "specula" object reports its acceptance; a request with logprobs
// runs on the plain decoder, says why in "note", and -- speculation being lossless -- its greedy
// text equals the speculative one.
#ifdef SPECULA_WITH_HTTPLIB

#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "specula/engine/engine.h"
#include "specula/model/demo_model.h"
#include "specula/server/http_server.h"
#include "specula/text/tokenizer.h"

namespace {

using namespace specula;
using nlohmann::json;

TEST(ServerSpeculative, LogprobsRequestsRunPlainAndSayWhy) {
  const std::string demo =
      (std::filesystem::temp_directory_path() / ("specula_spec_server_" + std::to_string(getpid()))).string();
  model::write_demo_model(demo);
  const text::Tokenizer tokenizer = text::Tokenizer::from_file(demo + "/tokenizer.json");
  std::filesystem::remove_all(demo);

  engine::EngineOptions o;
  o.model_dir = std::string(SPECULA_TEST_DATA) + "/eagle/target_llama3";
  o.draft_dir = std::string(SPECULA_TEST_DATA) + "/eagle/head_llama_bin";
  o.threads = 2;
  o.max_context = 128;
  o.tree = {4, 3, 16};
  auto engine = engine::Engine::load(o);
  ASSERT_GE(engine->config().vocab_size, tokenizer.vocab_size());

  server::ServedModel model;
  model.id = "target";
  model.engine = engine.get();
  model.tokenizer = &tokenizer;
  server::HttpServerOptions options;
  options.port = 0;
  server::HttpServer http(model, options);
  ASSERT_TRUE(http.bind());
  std::thread serving([&] { http.serve(); });
  httplib::Client client("127.0.0.1", http.port());
  client.set_read_timeout(30, 0);

  json request = {{"prompt", "the model"}, {"max_tokens", 24}, {"temperature", 0}};
  auto r = client.Post("/v1/completions", request.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json spec = json::parse(r->body);
  EXPECT_EQ(spec["specula"]["speculative"], true) << r->body;
  EXPECT_GT(spec["specula"]["verifications"].get<int>(), 0) << r->body;
  EXPECT_GE(spec["specula"]["accepted_tokens_per_verification"].get<double>(), 0.0) << r->body;
  EXPECT_EQ(spec["specula"]["tokens_per_verification"].get<double>(),
            spec["specula"]["accepted_tokens_per_verification"].get<double>() + 1.0);
  EXPECT_TRUE(spec["specula"]["note"].is_null());

  request["logprobs"] = 1;
  r = client.Post("/v1/completions", request.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json plain = json::parse(r->body);
  EXPECT_EQ(plain["specula"]["speculative"], false) << r->body;
  EXPECT_EQ(plain["specula"]["verifications"], 0);
  EXPECT_TRUE(plain["specula"]["accepted_tokens_per_verification"].is_null());
  EXPECT_NE(plain["specula"]["note"].get<std::string>().find("logprobs"), std::string::npos) << r->body;
  EXPECT_EQ(plain["choices"][0]["logprobs"]["token_logprobs"].size(),
            plain["usage"]["completion_tokens"].get<size_t>());
  EXPECT_EQ(plain["choices"][0]["text"], spec["choices"][0]["text"]);
  EXPECT_EQ(plain["usage"], spec["usage"]);

  // /metrics: the acceptance histogram (buckets 0..depth) counts the first request's passes.
  r = client.Get("/metrics");
  ASSERT_TRUE(r);
  const std::string hist = "specula_spec_accepted_tokens_per_verification";
  EXPECT_NE(r->body.find(hist + "_bucket{le=\"3\"} " + std::to_string(spec["specula"]["verifications"].get<int>())),
            std::string::npos) << r->body;
  EXPECT_NE(r->body.find(hist + "_count " + std::to_string(spec["specula"]["verifications"].get<int>())),
            std::string::npos) << r->body;
  EXPECT_NE(r->body.find("specula_decode_tokens_per_second "), std::string::npos);

  http.stop();
  serving.join();
}

}  // namespace

#endif  // SPECULA_WITH_HTTPLIB
