// The `specula` subcommands. Each file registers one subcommand on the CLI11 app and runs it;
// main.cpp only wires them together and turns errors into a message and exit status 1.
#pragma once

#include <CLI/CLI.hpp>

namespace specula::cli {

void add_generate_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_bench_spec_command(CLI::App& app);
void add_demo_model_command(CLI::App& app);
void add_freq_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace specula::cli
