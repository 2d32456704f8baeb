// specula: command-line front end of the engine. Subcommands live in their own files
// (commands.h); this file builds the app and reports errors as one line on stderr.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "terminal.h"

int main(int argc, char** argv) {
  CLI::App app{"specula: LLM inference engine for Llama-3, Qwen2/2.5/3 and MiniCPM4 checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "specula 0.1.0");
  specula::cli::add_generate_command(app);
  specula::cli::add_chat_command(app);
  specula::cli::add_inspect_command(app);
  specula::cli::add_bench_command(app);
  specula::cli::add_bench_spec_command(app);
  specula::cli::add_demo_model_command(app);
  specula::cli::add_freq_command(app);
  specula::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    specula::cli::end_status_line();
    std::fprintf(stderr, "specula: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
