// Restricted unpickler: the state_dict and int-list shapes torch.save writes parse; every
// hostile stream (code-executing globals, unknown opcodes, malformed stacks and memos, nesting
// and size bombs, bad persistent ids, views outside their storage) is a specula::Error naming
// what is wrong. Pickles are built opcode by opcode with PickleBuilder (io_test_util.h).
#include <gtest/gtest.h>

#include <optional>

#include "io_test_util.h"
#include "specula/io/pickle.h"

using namespace specula;
using namespace specula::io;
using namespace specula::io::testing;

namespace {

TorchPickle parse(const std::string& bytes, const PickleLimits& limits = {}) {
  return read_torch_pickle(bytes, "test.pkl", limits);
}

void expect_pickle_error(const std::string& bytes, const std::vector<std::string>& parts, const PickleLimits& limits = {}) {
  std::vector<std::string> all{"test.pkl"};
  all.insert(all.end(), parts.begin(), parts.end());
  expect_error([&] { parse(bytes, limits); }, all);
}

// A valid storage persistent id pushed on the stack, then BINPERSID.
PickleBuilder& storage(PickleBuilder& p, const std::string& cls = "FloatStorage", const std::string& key = "0",
                       int64_t numel = 12) {
  return p.mark().unicode("storage").global("torch", cls).unicode(key).unicode("cpu").integer(numel).tuple().persid();
}

// _rebuild_tensor_v2(storage(numel), offset, size, stride, False, OrderedDict()) as the top object.
std::string tensor_pickle(int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                          const std::vector<int64_t>& stride) {
  TorchPickleWriter w;
  w.builder().proto();
  w.tensor({"t", "FloatStorage", "0", numel, offset, size, stride});
  return w.builder().stop().bytes();
}

const PickledTensor kWeight{"w", "BFloat16Storage", "0", 12, 0, {3, 4}, {4, 1}};
const PickledTensor kTransposed{"w_t", "BFloat16Storage", "0", 12, 0, {4, 3}, {1, 4}};
const PickledTensor kBias{"b", "FloatStorage", "1", 5, 2, {3}, {1}};
const PickledTensor kScalar{"s", "LongStorage", "2", 1, 0, {}, {}};

}  // namespace

TEST(ioPickle, ReadsStateDictsInEveryStyleTorchWrites) {
  for (const StateDictStyle style : {StateDictStyle{}, StateDictStyle{true, false, false},
                                     StateDictStyle{true, true, false}, StateDictStyle{false, false, true}}) {
    const TorchPickle result = parse(state_dict_pickle({kWeight, kTransposed, kBias, kScalar}, style));
    ASSERT_EQ(result.kind, TorchPickle::Kind::StateDict);
    ASSERT_EQ(result.state_dict.size(), 4u);
    const auto& [name, w] = result.state_dict[0];
    EXPECT_EQ(name, "w");
    EXPECT_EQ(w.storage.key, "0");
    EXPECT_EQ(w.storage.dtype, DType::BF16);
    EXPECT_EQ(w.storage.numel, 12);
    EXPECT_EQ(w.size, (std::vector<int64_t>{3, 4}));
    EXPECT_TRUE(w.is_contiguous());
    EXPECT_FALSE(result.state_dict[1].second.is_contiguous());
    EXPECT_EQ(result.state_dict[2].second.storage_offset, 2);
    EXPECT_EQ(result.state_dict[2].second.storage.dtype, DType::F32);
    EXPECT_EQ(result.state_dict[3].second.storage.dtype, DType::I64);
    EXPECT_TRUE(result.state_dict[3].second.size.empty());
    EXPECT_EQ(result.state_dict[3].second.numel(), 1);
  }
}

TEST(ioPickle, ReadsEveryStorageClass) {
  const std::vector<std::pair<std::string, DType>> classes{
      {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16},  {"BFloat16Storage", DType::BF16},
      {"DoubleStorage", DType::F64}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
      {"ShortStorage", DType::I16}, {"CharStorage", DType::I8},   {"ByteStorage", DType::U8},
      {"BoolStorage", DType::Bool}};
  for (const auto& [cls, dtype] : classes) {
    const TorchPickle r = parse(state_dict_pickle({{"x", cls, "0", 2, 0, {2}, {1}}}));
    EXPECT_EQ(r.state_dict.at(0).second.storage.dtype, dtype) << cls;
  }
}

TEST(ioPickle, ReadsIntListsOfEveryWidth) {
  std::vector<int64_t> ids{0, 1, 255, 256, 65535, 65536, 128009, INT32_MAX, int64_t{1} << 31, -1, -129,
                           INT32_MIN, int64_t{INT32_MIN} - 1, INT64_MAX, INT64_MIN};
  for (int i = 0; i < 2600; ++i) ids.push_back(i * 37 % 70000);  // 3 batches of APPENDS, then a lone APPEND
  ids.push_back(131071);
  const TorchPickle r = parse(int_list_pickle(ids));
  ASSERT_EQ(r.kind, TorchPickle::Kind::IntList);
  EXPECT_EQ(r.ints, ids);
  EXPECT_TRUE(parse(int_list_pickle({})).ints.empty());
  EXPECT_EQ(parse(int_list_pickle({5})).ints, std::vector<int64_t>{5});
}

TEST(ioPickle, ReadsATopLevelTensorAndOtherScalars) {
  const TorchPickle r = parse(tensor_pickle(10, 1, {3}, {3}));
  ASSERT_EQ(r.kind, TorchPickle::Kind::Tensor);
  EXPECT_EQ(r.tensor->stride, std::vector<int64_t>{3});
  // None, floats and bools may appear inside containers (e.g. metadata) without harm.
  PickleBuilder p;
  p.proto().empty_dict().unicode("x").mark().none().binfloat(1.5).boolean(true).tuple().setitem();
  expect_pickle_error(p.stop().bytes(), {"state_dict entry 'x' is a tuple"});
}

TEST(ioPickle, RejectsCodeExecutingGlobals) {
  for (const auto& [module, name] : std::vector<std::pair<std::string, std::string>>{
           {"os", "system"}, {"builtins", "eval"}, {"posix", "system"}, {"subprocess", "Popen"},
           {"torch", "load"}, {"torch._utils", "_rebuild_qtensor"}, {"collections", "defaultdict"}}) {
    PickleBuilder p;
    p.proto().global(module, name).unicode("echo pwned").tuple_n(1).reduce().stop();
    expect_pickle_error(p.bytes(), {"GLOBAL", "'" + module + "." + name + "' is not allowed"});
  }
}

TEST(ioPickle, RejectsUnknownOpcodes) {
  // STRING, INST, OBJ, NEWOBJ, SHORT_BINUNICODE (protocol 4), FRAME, LONG4, 0xff: valid pickle,
  // not the protocol-2 subset torch.save uses for weights.
  for (const uint8_t code : {uint8_t{'S'}, uint8_t{'i'}, uint8_t{'o'}, uint8_t{0x81}, uint8_t{0x8c}, uint8_t{0x95},
                             uint8_t{0x8b}, uint8_t{0xff}, uint8_t{'P'}, uint8_t{'2'}}) {
    PickleBuilder p;
    p.proto().op(code).stop();
    expect_pickle_error(p.bytes(), {"pickle byte 2", "unknown or unsupported opcode"});
  }
}

TEST(ioPickle, RejectsReduceOnAnythingButWhitelistedCallables) {
  PickleBuilder not_callable;
  not_callable.proto().unicode("os.system").empty_tuple().reduce().stop();
  expect_pickle_error(not_callable.bytes(), {"REDUCE", "not a whitelisted callable"});
  PickleBuilder storage_call;
  storage_call.proto().global("torch", "FloatStorage").empty_tuple().reduce().stop();
  expect_pickle_error(storage_call.bytes(), {"REDUCE", "storage class"});
  PickleBuilder args_not_tuple;
  args_not_tuple.proto().global("collections", "OrderedDict").empty_list().reduce().stop();
  expect_pickle_error(args_not_tuple.bytes(), {"REDUCE", "not a tuple"});
  PickleBuilder ordered_dict_args;
  ordered_dict_args.proto().global("collections", "OrderedDict").empty_list().tuple_n(1).reduce().stop();
  expect_pickle_error(ordered_dict_args.bytes(), {"OrderedDict(...) with arguments"});
  PickleBuilder bad_parameter;
  bad_parameter.proto().global("torch._utils", "_rebuild_parameter").integer(1).boolean(false).empty_dict()
      .tuple_n(3).reduce().stop();
  expect_pickle_error(bad_parameter.bytes(), {"_rebuild_parameter"});
}

TEST(ioPickle, RejectsBadMemoIndices) {
  PickleBuilder p;
  p.proto().empty_list().put(0).get(1).stop();
  expect_pickle_error(p.bytes(), {"BINGET", "memo index 1"});
  PickleBuilder q;
  q.proto().empty_list().put(0).get(0xffffffff).stop();
  expect_pickle_error(q.bytes(), {"LONG_BINGET", "memo index 4294967295"});
  PickleBuilder r;
  r.proto().put(3).stop();  // BINPUT with nothing on the stack
  expect_pickle_error(r.bytes(), {"BINPUT", "underflow"});
}

TEST(ioPickle, RejectsStackUnderflow) {
  const auto build = [](auto body) {
    PickleBuilder p;
    p.proto();
    body(p);
    return p.stop().bytes();
  };
  expect_pickle_error(build([](PickleBuilder& p) { p.append(); }), {"APPEND", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.empty_dict().setitem(); }), {"SETITEM", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.none().tuple_n(2); }), {"TUPLE2", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.none().tuple(); }), {"TUPLE", "no MARK"});
  expect_pickle_error(build([](PickleBuilder& p) { p.reduce(); }), {"REDUCE", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.persid(); }), {"BINPERSID", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.empty_dict().build(); }), {"BUILD", "underflow"});
  // Items below a MARK are out of reach until the mark is consumed, as in CPython.
  expect_pickle_error(build([](PickleBuilder& p) { p.empty_list().mark().append(); }), {"APPEND", "underflow"});
  expect_pickle_error(build([](PickleBuilder& p) { p.empty_list().mark().integer(1).append(); }),
                      {"APPEND", "underflow"});
  // STOP with nothing (or too much) on the stack, or with an open MARK.
  expect_pickle_error(build([](PickleBuilder&) {}), {"STOP", "stack holds 0"});
  expect_pickle_error(build([](PickleBuilder& p) { p.none().none(); }), {"STOP", "stack holds 2"});
  expect_pickle_error(build([](PickleBuilder& p) { p.empty_list().mark(); }), {"STOP", "MARK"});
}

TEST(ioPickle, RejectsNestingBombsWithoutRecursing) {
  // Deep MARK nesting.
  PickleBuilder marks;
  marks.proto();
  for (int i = 0; i < 100000; ++i) marks.mark();
  expect_pickle_error(marks.stop().bytes(), {"MARK", "recursion limit"});
  // A million nested one-tuples: no MARK, a stack of one, depth grows by one per opcode.
  PickleBuilder tuples;
  tuples.proto().none();
  for (int i = 0; i < 1000000; ++i) tuples.tuple_n(1);
  expect_pickle_error(tuples.stop().bytes(), {"TUPLE1", "nested deeper than 64"});
  // Lists pushed first, then appended into each other from the top.
  PickleBuilder lists;
  lists.proto();
  for (int i = 0; i < 70000; ++i) lists.empty_list();
  for (int i = 0; i < 69999; ++i) lists.append();
  expect_pickle_error(lists.stop().bytes(), {"APPEND", "nested deeper than 64"});
  // Dict values nested the same way.
  PickleBuilder dicts;
  dicts.proto();
  for (int i = 0; i < 200; ++i) dicts.empty_dict().unicode("k");
  dicts.none();
  for (int i = 0; i < 200; ++i) dicts.setitem();
  expect_pickle_error(dicts.stop().bytes(), {"SETITEM", "nested deeper than 64"});
  // Just under the limit is fine (and is then rejected only for not being a state_dict).
  PickleBuilder ok;
  ok.proto().none();
  for (int i = 0; i < 64; ++i) ok.tuple_n(1);
  expect_pickle_error(ok.stop().bytes(), {"top-level object is a tuple"});
}

TEST(ioPickle, RejectsStreamsOverTheSizeLimits) {
  PickleLimits few_objects;
  few_objects.max_objects = 1000;
  std::vector<int64_t> many(2000, 7);
  expect_pickle_error(int_list_pickle(many), {"more than 1000 objects (size limit)"}, few_objects);
  PickleLimits short_stack;
  short_stack.max_stack = 100;
  PickleBuilder deep_stack;
  deep_stack.proto();
  for (int i = 0; i < 101; ++i) deep_stack.none();
  expect_pickle_error(deep_stack.stop().bytes(), {"stack deeper than 100 (size limit)"}, short_stack);
  // The same stream through BINGET: references count against the stack, not new objects.
  PickleBuilder memo_refs;
  memo_refs.proto().none().put(0);
  for (int i = 0; i < 100; ++i) memo_refs.get(0);
  expect_pickle_error(memo_refs.stop().bytes(), {"BINGET", "stack deeper than 100"}, short_stack);
  // The default limits let a vocabulary-sized list through.
  std::vector<int64_t> vocab(300000);
  for (size_t i = 0; i < vocab.size(); ++i) vocab[i] = static_cast<int64_t>(i);
  EXPECT_EQ(parse(int_list_pickle(vocab)).ints.size(), vocab.size());
}

TEST(ioPickle, RejectsRecursiveAndMutatedContainers) {
  PickleBuilder self;
  self.proto().empty_list().put(0).get(0).append().stop();
  expect_pickle_error(self.bytes(), {"APPEND", "cannot contain itself"});
  // a = []; b = [a]; a.append(b): a cycle through two lists.
  PickleBuilder cycle;
  cycle.proto().empty_list().put(0).empty_list().put(1).get(0).append().get(0).get(1).append().stop();
  expect_pickle_error(cycle.bytes(), {"APPEND", "already inside another container"});
  PickleBuilder dict_cycle;
  dict_cycle.proto().empty_dict().put(0).empty_tuple().get(0).tuple_n(2).get(0).integer(1).get(0).setitem().stop();
  expect_pickle_error(dict_cycle.bytes(), {"SETITEM"});
}

TEST(ioPickle, RejectsBadPersistentIds) {
  const auto with_pid = [](auto push_pid) {
    PickleBuilder p;
    p.proto();
    push_pid(p);
    return p.persid().stop().bytes();
  };
  expect_pickle_error(with_pid([](PickleBuilder& p) { p.unicode("0"); }), {"BINPERSID", "wrong type or length"});
  expect_pickle_error(with_pid([](PickleBuilder& p) { p.mark().unicode("storage").tuple(); }),
                      {"BINPERSID", "wrong type or length"});
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("module").global("torch", "FloatStorage").unicode("0").unicode("cpu").integer(1).tuple();
                      }),
                      {"BINPERSID", "'storage'"});
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("storage").global("collections", "OrderedDict").unicode("0").unicode("cpu").integer(1).tuple();
                      }),
                      {"BINPERSID", "storage class"});
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("storage").global("torch", "FloatStorage").integer(0).unicode("cpu").integer(1).tuple();
                      }),
                      {"BINPERSID", "key"});
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("storage").global("torch", "FloatStorage").unicode("0").unicode("cpu").integer(-1).tuple();
                      }),
                      {"BINPERSID", "numel"});
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("storage").global("torch", "DoubleStorage").unicode("0").unicode("cpu").integer(INT64_MAX).tuple();
                      }),
                      {"BINPERSID", "overflows"});
  // Unknown storage classes are globals like any other.
  expect_pickle_error(with_pid([](PickleBuilder& p) {
                        p.mark().unicode("storage").global("torch", "ComplexFloatStorage");
                      }),
                      {"GLOBAL", "torch.ComplexFloatStorage"});
}

TEST(ioPickle, RejectsViewsThatLeaveTheirStorage) {
  EXPECT_NO_THROW(parse(tensor_pickle(12, 0, {3, 4}, {4, 1})));
  EXPECT_NO_THROW(parse(tensor_pickle(12, 11, {1}, {1})));
  EXPECT_NO_THROW(parse(tensor_pickle(0, 0, {0, 5}, {5, 1})));  // empty tensors need no storage
  expect_pickle_error(tensor_pickle(11, 0, {3, 4}, {4, 1}), {"REDUCE", "storage too small"});
  expect_pickle_error(tensor_pickle(12, 1, {3, 4}, {4, 1}), {"storage too small"});
  expect_pickle_error(tensor_pickle(12, 0, {3, 4}, {5, 1}), {"storage too small"});
  expect_pickle_error(tensor_pickle(12, 12, {}, {}), {"storage too small"});
  expect_pickle_error(tensor_pickle(12, 0, {3, 4}, {4}), {"size has 2 dimensions but stride has 1"});
  expect_pickle_error(tensor_pickle(12, 0, {int64_t{1} << 62, 4}, {1, 1}), {"overflow"});
  expect_pickle_error(tensor_pickle(12, 0, {2, 2}, {int64_t{1} << 62, 1}), {"storage too small"});
  expect_pickle_error(tensor_pickle(12, 0, {2, 2}, {INT64_MAX, INT64_MAX}), {"overflow"});
  expect_pickle_error(tensor_pickle(12, -1, {2}, {1}), {"storage_offset"});
  expect_pickle_error(tensor_pickle(12, 0, {-2}, {1}), {"size"});
}

// Every size and offset product is checked: offset + reach, (size - 1) * stride, the element
// count and a storage's byte count each refuse a value past int64 instead of wrapping.
TEST(ioPickle, RejectsViewArithmeticThatLeavesInt64) {
  expect_pickle_error(tensor_pickle(12, INT64_MAX, {2}, {1}), {"REDUCE", "overflow"});
  expect_pickle_error(tensor_pickle(12, int64_t{1} << 62, {3}, {int64_t{1} << 61}), {"overflow"});
  expect_pickle_error(tensor_pickle(12, 0, {3, 2}, {int64_t{1} << 62, 1}), {"overflow"});
  expect_pickle_error(tensor_pickle(12, 0, {int64_t{1} << 32, int64_t{1} << 31}, {0, 0}), {"overflow"});
  expect_pickle_error(tensor_pickle(12, 0, {2}, {INT64_MAX}), {"overflow"});  // its last element is INT64_MAX
  // Just inside the limit the arithmetic is exact, and the view is refused for what it is.
  expect_pickle_error(tensor_pickle(12, 0, {2}, {INT64_MAX - 1}),
                      {"storage too small", "reaches element 9223372036854775806"});
  PickleBuilder doubles;  // 2^60 doubles are 2^63 bytes
  storage(doubles.proto(), "DoubleStorage", "0", int64_t{1} << 60).stop();
  expect_pickle_error(doubles.bytes(), {"BINPERSID", "overflows"});
  // Empty views read nothing, whatever their strides (torch checks no bounds for them either).
  EXPECT_NO_THROW(parse(tensor_pickle(12, INT64_MAX, {0, 5}, {INT64_MAX, INT64_MAX})));
  // A stride-0 view inside its storage passes the pickle with its exact (huge) element count; the
  // checkpoint reader decides whether it may be expanded.
  const TorchPickle expanded = parse(tensor_pickle(1, 0, {(int64_t{1} << 62) + 1}, {0}));
  EXPECT_EQ(expanded.tensor->storage_extent(), std::optional<uint64_t>(1));
  EXPECT_EQ(expanded.tensor->numel(), (int64_t{1} << 62) + 1);
}

TEST(ioPickle, TensorRefArithmeticIsChecked) {
  TorchTensorRef ref;
  ref.storage.key = "7";
  ref.size = {int64_t{1} << 62, 4};
  ref.stride = {0, 0};
  expect_error([&] { (void)ref.numel(); }, {"storage '7'", "overflows"});
  EXPECT_EQ(ref.storage_extent(), std::nullopt);
  EXPECT_FALSE(ref.is_contiguous());
  ref.size = {3, 4};
  ref.stride = {4, 1};
  ref.storage_offset = 2;
  EXPECT_EQ(ref.storage_extent(), std::optional<uint64_t>(14));
  EXPECT_TRUE(ref.is_contiguous());
  ref.stride = {INT64_MAX, INT64_MAX};
  EXPECT_EQ(ref.storage_extent(), std::nullopt);
  EXPECT_FALSE(ref.is_contiguous());
}

TEST(ioPickle, RejectsMalformedTensorArguments) {
  PickleBuilder few;
  storage(few.proto().global("torch._utils", "_rebuild_tensor_v2").mark()).integer(0).empty_tuple().tuple().reduce().stop();
  expect_pickle_error(few.bytes(), {"expects 6 or 7 arguments, got 3"});
  PickleBuilder not_storage;
  not_storage.proto().global("torch._utils", "_rebuild_tensor_v2").mark().unicode("0").integer(0).empty_tuple()
      .empty_tuple().boolean(false).empty_dict().tuple().reduce().stop();
  expect_pickle_error(not_storage.bytes(), {"not a storage"});
  PickleBuilder list_size;
  storage(list_size.proto().global("torch._utils", "_rebuild_tensor_v2").mark()).integer(0).empty_list()
      .empty_tuple().boolean(false).empty_dict().tuple().reduce().stop();
  expect_pickle_error(list_size.bytes(), {"size is a list"});
}

TEST(ioPickle, RejectsTopLevelObjectsThatAreNotWeights) {
  PickleBuilder dup;
  dup.proto().empty_dict().mark();
  for (int i = 0; i < 2; ++i) {
    dup.unicode("w");
    storage(dup.global("torch._utils", "_rebuild_tensor_v2").mark(), "FloatStorage", "0", 1)
        .integer(0).empty_tuple().empty_tuple().boolean(false).empty_dict().tuple().reduce();
  }
  expect_pickle_error(dup.setitems().stop().bytes(), {"key 'w' appears twice"});
  PickleBuilder value;
  value.proto().empty_dict().unicode("epoch").integer(3).setitem().stop();
  expect_pickle_error(value.bytes(), {"'epoch' is a int, not a tensor"});
  PickleBuilder key;
  key.proto().empty_dict().integer(1).integer(3).setitem().stop();
  expect_pickle_error(key.bytes(), {"key is a int"});
  PickleBuilder list;
  list.proto().empty_list().unicode("a").append().stop();
  expect_pickle_error(list.bytes(), {"list item 0 is a str"});
  PickleBuilder str;
  str.proto().unicode("hello").stop();
  expect_pickle_error(str.bytes(), {"top-level object is a str"});
  PickleBuilder tuple_key;
  tuple_key.proto().empty_dict().empty_tuple().integer(3).setitem().stop();
  expect_pickle_error(tuple_key.bytes(), {"dict key of type tuple"});
}

TEST(ioPickle, RejectsMalformedStreams) {
  expect_pickle_error("", {"without STOP"});
  expect_pickle_error(PickleBuilder().proto().empty_list().bytes(), {"without STOP"});
  expect_pickle_error(PickleBuilder().proto(4).empty_list().stop().bytes(), {"protocol 4"});
  expect_pickle_error(PickleBuilder().proto().empty_list().stop().raw("junk").bytes(), {"4 bytes follow STOP"});
  expect_pickle_error(PickleBuilder().proto().op('X').le(100, 4).raw("short").bytes(), {"BINUNICODE", "truncated"});
  expect_pickle_error(PickleBuilder().proto().op('X').le(0xffffffff, 4).bytes(), {"truncated"});
  expect_pickle_error(PickleBuilder().proto().unicode("\xff\xfe").stop().bytes(), {"UTF-8"});
  expect_pickle_error(PickleBuilder().proto().op('c').raw("os").bytes(), {"GLOBAL", "newline-terminated"});
  expect_pickle_error(PickleBuilder().proto().op('c').raw(std::string(300, 'a') + "\nb\n").stop().bytes(),
                      {"GLOBAL", "newline-terminated"});
  expect_pickle_error(PickleBuilder().proto().long1(std::string(9, '\x01')).stop().bytes(), {"LONG1", "64 bits"});
  expect_pickle_error(PickleBuilder().proto().op('J').raw("ab").bytes(), {"BININT", "truncated"});
  expect_pickle_error(PickleBuilder().proto().empty_list().build().stop().bytes(), {"BUILD"});
  expect_pickle_error(PickleBuilder().proto().empty_list().none().build().stop().bytes(), {"BUILD on a list"});
  expect_pickle_error(PickleBuilder().proto().empty_dict().mark().none().setitems().stop().bytes(),
                      {"SETITEMS", "odd number"});
  expect_pickle_error(PickleBuilder().proto().empty_tuple().integer(1).append().stop().bytes(),
                      {"APPEND", "expects a list"});
  // LONG1 of zero bytes is 0; of eight bytes is the full int64 range.
  EXPECT_EQ(parse(PickleBuilder().proto().empty_list().long1("").append().stop().bytes()).ints, std::vector<int64_t>{0});
  EXPECT_EQ(parse(PickleBuilder().proto().empty_list().long1(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8)).append().stop().bytes()).ints,
            std::vector<int64_t>{INT64_MAX});
  EXPECT_EQ(parse(PickleBuilder().proto().empty_list().long1("\xfe").append().stop().bytes()).ints,
            std::vector<int64_t>{-2});
}

// Every truncation and every single-byte change of a real-shaped state_dict pickle is either
// parsed or rejected with specula::Error; the ASan build checks that no read leaves the buffer.
TEST(ioPickle, SurvivesEveryTruncationAndByteCorruption) {
  const std::string good =
      state_dict_pickle({kWeight, kTransposed, kBias, kScalar}, StateDictStyle{true, true, true});
  for (size_t n = 0; n < good.size(); ++n) EXPECT_THROW(parse(good.substr(0, n)), specula::Error) << n;
  for (size_t i = 0; i < good.size(); ++i) {
    for (const char value : {'\x00', '\x01', '\x7f', '\x80', '\xff', 'e', 'u', '(', 'h'}) {
      std::string bytes = good;
      bytes[i] = value;
      try {
        parse(bytes);
      } catch (const specula::Error&) {
      }
    }
  }
}
