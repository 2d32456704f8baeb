// The restricted unpickler. Pickled values live in one arena (a vector indexed by ObjectId), so
// memo references and shared objects are plain indices and freeing everything is one vector
// destructor: no reference counting, no recursive destruction of deep structures.
// Containers are sealed once placed inside another container; after that they may not be
// modified. Python's pickler always fills a container before its parent takes it (only
// self-referencing structures break this), so real files never hit the rule, and it makes
// reference cycles impossible and the nesting depth recorded on each object exact.
// The globals never run: REDUCE on a whitelisted global is interpreted here (OrderedDict() -> an
// empty dict, _rebuild_tensor_v2 -> a checked TorchTensorRef, _rebuild_parameter -> its tensor).
#include "specula/io/pickle.h"

#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"

namespace specula::io {

int64_t TorchTensorRef::numel() const { return checked_numel(size, "tensor view on storage '" + storage.key + "'"); }

std::optional<uint64_t> TorchTensorRef::storage_extent() const {
  uint64_t numel = 1;
  for (const int64_t d : size)
    if (d < 0 || !checked_mul(numel, static_cast<uint64_t>(d), kMaxCheckedSize, numel)) return std::nullopt;
  if (numel == 0) return 0;  // reads nothing, whatever its strides (torch checks no bounds then either)
  // The furthest element is offset + sum((size_i - 1) * stride_i); every step is checked.
  if (storage_offset < 0) return std::nullopt;
  uint64_t last = static_cast<uint64_t>(storage_offset);
  for (size_t i = 0; i < size.size(); ++i) {
    uint64_t reach = 0;
    if (i >= stride.size() || stride[i] < 0 ||
        !checked_mul(static_cast<uint64_t>(size[i]) - 1, static_cast<uint64_t>(stride[i]), kMaxCheckedSize, reach) ||
        !checked_add(last, reach, kMaxCheckedSize, last))
      return std::nullopt;
  }
  uint64_t extent = 0;
  if (!checked_add(last, 1, kMaxCheckedSize, extent)) return std::nullopt;
  return extent;
}

bool TorchTensorRef::is_contiguous() const {
  for (const int64_t d : size)
    if (d == 0) return true;  // no elements, nothing to lay out
  uint64_t expected = 1;
  for (size_t i = size.size(); i-- > 0;) {
    if (size[i] == 1) continue;
    if (i >= stride.size() || stride[i] < 0 || static_cast<uint64_t>(stride[i]) != expected) return false;
    if (!checked_mul(expected, static_cast<uint64_t>(size[i]), kMaxCheckedSize, expected)) return false;
  }
  return true;
}

namespace {

using ObjectId = uint32_t;

// Protocol-2 opcodes of section 2.3 of the format reference; nothing else is accepted.
namespace op {
constexpr uint8_t PROTO = 0x80, STOP = '.', MARK = '(', EMPTY_DICT = '}', EMPTY_LIST = ']', EMPTY_TUPLE = ')',
                  TUPLE = 't', TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, SETITEM = 's', SETITEMS = 'u',
                  APPEND = 'a', APPENDS = 'e', BINPUT = 'q', LONG_BINPUT = 'r', BINGET = 'h', LONG_BINGET = 'j',
                  BININT1 = 'K', BININT2 = 'M', BININT = 'J', LONG1 = 0x8a, BINUNICODE = 'X', BINFLOAT = 'G',
                  NEWTRUE = 0x88, NEWFALSE = 0x89, NONE = 'N', GLOBAL = 'c', REDUCE = 'R', BUILD = 'b',
                  BINPERSID = 'Q';
}  // namespace op

std::string_view opcode_name(uint8_t code) {
  switch (code) {
    case op::PROTO: return "PROTO";
    case op::STOP: return "STOP";
    case op::MARK: return "MARK";
    case op::EMPTY_DICT: return "EMPTY_DICT";
    case op::EMPTY_LIST: return "EMPTY_LIST";
    case op::EMPTY_TUPLE: return "EMPTY_TUPLE";
    case op::TUPLE: return "TUPLE";
    case op::TUPLE1: return "TUPLE1";
    case op::TUPLE2: return "TUPLE2";
    case op::TUPLE3: return "TUPLE3";
    case op::SETITEM: return "SETITEM";
    case op::SETITEMS: return "SETITEMS";
    case op::APPEND: return "APPEND";
    case op::APPENDS: return "APPENDS";
    case op::BINPUT: return "BINPUT";
    case op::LONG_BINPUT: return "LONG_BINPUT";
    case op::BINGET: return "BINGET";
    case op::LONG_BINGET: return "LONG_BINGET";
    case op::BININT1: return "BININT1";
    case op::BININT2: return "BININT2";
    case op::BININT: return "BININT";
    case op::LONG1: return "LONG1";
    case op::BINUNICODE: return "BINUNICODE";
    case op::BINFLOAT: return "BINFLOAT";
    case op::NEWTRUE: return "NEWTRUE";
    case op::NEWFALSE: return "NEWFALSE";
    case op::NONE: return "NONE";
    case op::GLOBAL: return "GLOBAL";
    case op::REDUCE: return "REDUCE";
    case op::BUILD: return "BUILD";
    case op::BINPERSID: return "BINPERSID";
    default: return {};
  }
}

enum class ObjectKind : uint8_t { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor };

std::string_view kind_name(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::None: return "None";
    case ObjectKind::Bool: return "bool";
    case ObjectKind::Int: return "int";
    case ObjectKind::Float: return "float";
    case ObjectKind::String: return "str";
    case ObjectKind::Tuple: return "tuple";
    case ObjectKind::List: return "list";
    case ObjectKind::Dict: return "dict";
    case ObjectKind::Global: return "global";
    case ObjectKind::Storage: return "storage";
    case ObjectKind::Tensor: return "tensor";
  }
  return "?";
}

enum class GlobalKind : uint8_t { OrderedDict, RebuildTensorV2, RebuildParameter, StorageClass };

struct StorageClass {
  std::string_view name;
  DType dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16},  {"BFloat16Storage", DType::BF16},
    {"DoubleStorage", DType::F64}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
    {"ShortStorage", DType::I16}, {"CharStorage", DType::I8},   {"ByteStorage", DType::U8},
    {"BoolStorage", DType::Bool},
};

struct Object {
  ObjectKind kind = ObjectKind::None;
  bool sealed = false;   // inside another container: may no longer be modified
  uint32_t depth = 0;    // container levels below this object (0 for scalars and empty containers)
  int64_t integer = 0;   // Int, Bool
  double real = 0;       // Float
  std::string text;      // String
  std::vector<ObjectId> items;  // Tuple, List; Dict as key, value, key, value, ...
  GlobalKind global = GlobalKind::OrderedDict;
  DType dtype = DType::U8;  // Global StorageClass
  size_t ref = 0;           // Storage: index into storages_; Tensor: index into tensors_
};

bool is_container(ObjectKind kind) {
  return kind == ObjectKind::Tuple || kind == ObjectKind::List || kind == ObjectKind::Dict;
}

class Unpickler {
 public:
  Unpickler(std::string_view bytes, const std::string& what, const PickleLimits& limits)
      : bytes_(bytes), what_(what), limits_(limits) {}

  TorchPickle run() {
    while (true) {
      SPECULA_CHECK(pos_ < bytes_.size(), what_, ": truncated pickle: ends at byte ", bytes_.size(),
                    " without STOP");
      opcode_offset_ = pos_;
      opcode_ = read_u8();
      if (opcode_ == op::STOP) break;
      step();
    }
    if (pos_ != bytes_.size()) error(bytes_.size() - pos_, " bytes follow STOP");
    if (!marks_.empty()) error("MARK without matching TUPLE/APPENDS/SETITEMS");
    if (stack_.size() != 1) error("stack holds ", stack_.size(), " objects at STOP (expected 1)");
    return convert_result(stack_.back());
  }

 private:
  template <typename... Parts>
  [[noreturn]] void error(Parts&&... parts) const {
    const std::string_view name = opcode_name(opcode_);
    fail(what_, ": pickle byte ", opcode_offset_, " (", name.empty() ? std::string_view("?") : name, "): ",
         std::forward<Parts>(parts)...);
  }

  // ---- reading the opcode stream ----
  void need(size_t n) const {
    if (bytes_.size() - pos_ < n) error("truncated: argument needs ", n, " bytes, ", bytes_.size() - pos_, " left");
  }
  uint8_t read_u8() {
    need(1);
    return static_cast<uint8_t>(bytes_[pos_++]);
  }
  uint64_t read_le(size_t n) {
    need(n);
    uint64_t value = 0;
    for (size_t i = 0; i < n; ++i) value |= static_cast<uint64_t>(static_cast<uint8_t>(bytes_[pos_ + i])) << (8 * i);
    pos_ += n;
    return value;
  }
  std::string_view read_bytes(size_t n) {
    need(n);
    const std::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::string_view read_line() {
    constexpr size_t kMaxLine = 256;  // dotted Python names; anything longer is not a whitelisted global
    const size_t length = bytes_.substr(pos_, kMaxLine + 1).find('\n');  // looks no further than a name can be
    if (length == std::string_view::npos) error("GLOBAL name is not a short newline-terminated line");
    const size_t end = pos_ + length;
    const std::string_view line = bytes_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return line;
  }

  // ---- objects and the stack ----
  Object& object(ObjectId id) { return objects_[id]; }
  ObjectId make(Object object) {
    if (objects_.size() >= limits_.max_objects) error("more than ", limits_.max_objects, " objects (size limit)");
    objects_.push_back(std::move(object));
    return static_cast<ObjectId>(objects_.size() - 1);
  }
  ObjectId make_kind(ObjectKind kind) {
    Object o;
    o.kind = kind;
    return make(std::move(o));
  }
  void push(ObjectId id) {
    if (stack_.size() >= limits_.max_stack) error("stack deeper than ", limits_.max_stack, " (size limit)");
    stack_.push_back(id);
  }
  // Items above the innermost MARK: opcodes may not consume a mark's contents implicitly.
  size_t available() const { return stack_.size() - (marks_.empty() ? 0 : marks_.back()); }
  void require(size_t n) const {
    if (available() < n) error("stack underflow: needs ", n, " objects, ", available(), " available");
  }
  ObjectId pop() {
    require(1);
    const ObjectId id = stack_.back();
    stack_.pop_back();
    return id;
  }
  ObjectId top() const {
    require(1);
    return stack_.back();
  }
  std::vector<ObjectId> pop_to_mark() {
    if (marks_.empty()) error("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ObjectId> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  // Records that `container` now holds `item`: seals the item and updates the container's depth.
  void adopt(ObjectId container, ObjectId item) {
    if (container == item) error("a container cannot contain itself (recursive structures are not supported)");
    Object& child = object(item);
    if (is_container(child.kind)) child.sealed = true;
    const uint32_t depth = is_container(child.kind) ? child.depth + 1 : 1;
    Object& parent = object(container);
    if (depth > parent.depth) parent.depth = depth;
    if (parent.depth > limits_.max_nesting)
      error("containers nested deeper than ", limits_.max_nesting, " (recursion limit)");
  }
  ObjectId mutable_container(ObjectKind kind) {
    const ObjectId id = top();
    const Object& o = object(id);
    if (o.kind != kind) error("expects a ", kind_name(kind), " below its arguments, found a ", kind_name(o.kind));
    if (o.sealed) error("modifies a ", kind_name(kind), " already inside another container (unsupported)");
    return id;
  }
  ObjectId make_tuple(const std::vector<ObjectId>& items) {
    const ObjectId id = make_kind(ObjectKind::Tuple);
    for (const ObjectId item : items) adopt(id, item);
    object(id).items = items;
    return id;
  }
  void append_items(const std::vector<ObjectId>& items) {
    const ObjectId list = mutable_container(ObjectKind::List);
    for (const ObjectId item : items) adopt(list, item);
    auto& dest = object(list).items;
    dest.insert(dest.end(), items.begin(), items.end());
  }
  void set_items(const std::vector<ObjectId>& items) {
    if (items.size() % 2 != 0) error("odd number of objects (", items.size(), ") for key/value pairs");
    const ObjectId dict = mutable_container(ObjectKind::Dict);
    for (size_t i = 0; i < items.size(); i += 2) {
      const ObjectKind key_kind = object(items[i]).kind;
      if (key_kind != ObjectKind::String && key_kind != ObjectKind::Int)
        error("dict key of type ", kind_name(key_kind), " is not supported (only str and int)");
      adopt(dict, items[i]);
      adopt(dict, items[i + 1]);
    }
    auto& dest = object(dict).items;
    dest.insert(dest.end(), items.begin(), items.end());
  }

  // ---- one opcode ----
  void step() {
    switch (opcode_) {
      case op::PROTO: {
        const uint8_t protocol = read_u8();
        if (protocol != 2) error("pickle protocol ", int{protocol}, " is not supported (torch.save writes protocol 2)");
        break;
      }
      case op::MARK:
        if (marks_.size() >= limits_.max_marks) error("MARKs nested deeper than ", limits_.max_marks, " (recursion limit)");
        marks_.push_back(stack_.size());
        break;
      case op::EMPTY_DICT: push(make_kind(ObjectKind::Dict)); break;
      case op::EMPTY_LIST: push(make_kind(ObjectKind::List)); break;
      case op::EMPTY_TUPLE: push(make_kind(ObjectKind::Tuple)); break;
      case op::TUPLE: push(make_tuple(pop_to_mark())); break;
      case op::TUPLE1:
      case op::TUPLE2:
      case op::TUPLE3: {
        const size_t n = opcode_ - op::TUPLE1 + 1;
        require(n);
        std::vector<ObjectId> items(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        push(make_tuple(items));
        break;
      }
      case op::SETITEM: {
        require(3);
        const ObjectId value = pop();
        const ObjectId key = pop();
        set_items({key, value});
        break;
      }
      case op::SETITEMS: {
        std::vector<ObjectId> items = pop_to_mark();
        set_items(items);
        break;
      }
      case op::APPEND: {
        require(2);
        const ObjectId item = pop();
        append_items({item});
        break;
      }
      case op::APPENDS: {
        std::vector<ObjectId> items = pop_to_mark();
        append_items(items);
        break;
      }
      case op::BINPUT: memo_put(read_u8()); break;
      case op::LONG_BINPUT: memo_put(static_cast<uint32_t>(read_le(4))); break;
      case op::BINGET: memo_get(read_u8()); break;
      case op::LONG_BINGET: memo_get(static_cast<uint32_t>(read_le(4))); break;
      case op::BININT1: push_int(read_u8()); break;
      case op::BININT2: push_int(static_cast<int64_t>(read_le(2))); break;
      case op::BININT: push_int(static_cast<int32_t>(static_cast<uint32_t>(read_le(4)))); break;
      case op::LONG1: {
        const size_t n = read_u8();
        if (n > 8) error("integer of ", n, " bytes does not fit in 64 bits");
        uint64_t value = read_le(n);
        if (n > 0 && n < 8 && (value >> (8 * n - 1)) & 1) value |= ~uint64_t{0} << (8 * n);  // sign-extend
        push_int(static_cast<int64_t>(value));
        break;
      }
      case op::BINUNICODE: {
        const uint32_t length = static_cast<uint32_t>(read_le(4));
        const std::string_view text = read_bytes(length);
        if (!is_valid_utf8(text)) error("string is not valid UTF-8");
        Object o;
        o.kind = ObjectKind::String;
        o.text = std::string(text);
        push(make(std::move(o)));
        break;
      }
      case op::BINFLOAT: {
        const std::string_view raw = read_bytes(8);
        uint64_t bits = 0;
        for (const char c : raw) bits = (bits << 8) | static_cast<uint8_t>(c);  // big-endian, unlike the rest
        Object o;
        o.kind = ObjectKind::Float;
        std::memcpy(&o.real, &bits, sizeof bits);
        push(make(std::move(o)));
        break;
      }
      case op::NEWTRUE:
      case op::NEWFALSE: {
        Object o;
        o.kind = ObjectKind::Bool;
        o.integer = opcode_ == op::NEWTRUE;
        push(make(std::move(o)));
        break;
      }
      case op::NONE: push(make_kind(ObjectKind::None)); break;
      case op::GLOBAL: push(make_global()); break;
      case op::REDUCE: reduce(); break;
      case op::BUILD: {
        require(2);
        pop();  // the state, e.g. a state_dict's `_metadata`: nothing here reads it
        const ObjectKind kind = object(top()).kind;
        if (kind != ObjectKind::Dict) error("BUILD on a ", kind_name(kind), " (only dict state is accepted)");
        break;
      }
      case op::BINPERSID: push(make_storage(pop())); break;
      default: {
        const bool printable = opcode_ >= 0x20 && opcode_ < 0x7f;
        fail(what_, ": pickle byte ", opcode_offset_, ": unknown or unsupported opcode 0x", hex(opcode_),
             printable ? std::string(" ('") + static_cast<char>(opcode_) + "')" : std::string(),
             " (this reader accepts only the opcodes torch.save uses for state_dicts and int lists)");
      }
    }
  }

  static std::string hex(uint8_t value) {
    constexpr char kDigits[] = "0123456789abcdef";
    return {kDigits[value >> 4], kDigits[value & 15]};
  }

  void push_int(int64_t value) {
    Object o;
    o.kind = ObjectKind::Int;
    o.integer = value;
    push(make(std::move(o)));
  }

  void memo_put(uint32_t index) { memo_[index] = top(); }
  void memo_get(uint32_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) error("memo index ", index, " was never stored");
    push(it->second);
  }

  ObjectId make_global() {
    const std::string module(read_line());
    const std::string name(read_line());
    Object o;
    o.kind = ObjectKind::Global;
    if (module == "collections" && name == "OrderedDict") {
      o.global = GlobalKind::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      o.global = GlobalKind::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      o.global = GlobalKind::RebuildParameter;
    } else {
      bool is_storage = false;
      if (module == "torch") {
        for (const StorageClass& s : kStorageClasses) {
          if (s.name == name) {
            o.global = GlobalKind::StorageClass;
            o.dtype = s.dtype;
            is_storage = true;
          }
        }
      }
      if (!is_storage)
        error("global '", module, ".", name,
              "' is not allowed (only collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
              "torch._utils._rebuild_parameter and torch.<Type>Storage classes; nothing is executed)");
    }
    return make(std::move(o));
  }

  [[noreturn]] void bad_persistent_id(const char* why) const {
    error("persistent id is not a ('storage', <torch storage class>, key, location, numel) tuple: ", why);
  }

  // ('storage', <storage class>, key, location, numel) -> a storage reference.
  ObjectId make_storage(ObjectId pid) {
    const Object& t = object(pid);
    if (t.kind != ObjectKind::Tuple || t.items.size() != 5) bad_persistent_id("wrong type or length");
    const Object& tag = object(t.items[0]);
    const Object& cls = object(t.items[1]);
    const Object& key = object(t.items[2]);
    const Object& location = object(t.items[3]);
    const Object& numel = object(t.items[4]);
    if (tag.kind != ObjectKind::String || tag.text != "storage") bad_persistent_id("first item is not 'storage'");
    if (cls.kind != ObjectKind::Global || cls.global != GlobalKind::StorageClass) bad_persistent_id("second item is not a storage class");
    if (key.kind != ObjectKind::String) bad_persistent_id("key is not a str");
    if (location.kind != ObjectKind::String) bad_persistent_id("location is not a str");
    if (numel.kind != ObjectKind::Int || numel.integer < 0) bad_persistent_id("numel is not a non-negative int");
    uint64_t nbytes = 0;
    if (!checked_mul(static_cast<uint64_t>(numel.integer), dtype_size(cls.dtype), kMaxCheckedSize, nbytes))
      error("storage '", key.text, "' of ", numel.integer, " elements overflows");
    storages_.push_back({key.text, cls.dtype, numel.integer});
    Object o;
    o.kind = ObjectKind::Storage;
    o.ref = storages_.size() - 1;
    return make(std::move(o));
  }

  void reduce() {
    require(2);
    const ObjectId args_id = pop();
    const ObjectId callable_id = pop();
    const Object& callable = object(callable_id);
    const Object& args = object(args_id);
    if (callable.kind != ObjectKind::Global)
      error("REDUCE on a ", kind_name(callable.kind), ", which is not a whitelisted callable");
    if (args.kind != ObjectKind::Tuple) error("REDUCE arguments are a ", kind_name(args.kind), ", not a tuple");
    switch (callable.global) {
      case GlobalKind::OrderedDict:
        if (!args.items.empty()) error("OrderedDict(...) with arguments is not supported");
        push(make_kind(ObjectKind::Dict));
        return;
      case GlobalKind::RebuildTensorV2: {
        const std::vector<ObjectId> items = args.items;
        push(make_tensor(items));
        return;
      }
      case GlobalKind::RebuildParameter: {
        if (args.items.size() != 3 || object(args.items[0]).kind != ObjectKind::Tensor)
          error("_rebuild_parameter expects (tensor, requires_grad, backward_hooks)");
        push(args.items[0]);
        return;
      }
      case GlobalKind::StorageClass:
        error("calling a storage class is not supported (storages come only from persistent ids)");
    }
  }

  int64_t non_negative_int(ObjectId id, const char* what) {
    const Object& o = object(id);
    if (o.kind != ObjectKind::Int || o.integer < 0) error("_rebuild_tensor_v2: ", what, " is not a non-negative int");
    return o.integer;
  }

  std::vector<int64_t> int_tuple(ObjectId id, const char* what) {
    const Object& o = object(id);
    if (o.kind != ObjectKind::Tuple) error("_rebuild_tensor_v2: ", what, " is a ", kind_name(o.kind), ", not a tuple");
    std::vector<int64_t> out;
    for (const ObjectId item : o.items) out.push_back(non_negative_int(item, what));
    return out;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  ObjectId make_tensor(const std::vector<ObjectId>& args) {
    if (args.size() != 6 && args.size() != 7) error("_rebuild_tensor_v2 expects 6 or 7 arguments, got ", args.size());
    const Object& storage = object(args[0]);
    if (storage.kind != ObjectKind::Storage)
      error("_rebuild_tensor_v2: first argument is a ", kind_name(storage.kind), ", not a storage");
    TorchTensorRef tensor;
    tensor.storage = storages_[storage.ref];
    tensor.storage_offset = non_negative_int(args[1], "storage_offset");
    tensor.size = int_tuple(args[2], "size");
    tensor.stride = int_tuple(args[3], "stride");
    if (tensor.size.size() != tensor.stride.size())
      error("_rebuild_tensor_v2: size has ", tensor.size.size(), " dimensions but stride has ", tensor.stride.size());
    if (object(args[4]).kind != ObjectKind::Bool) error("_rebuild_tensor_v2: requires_grad is not a bool");
    if (object(args[5]).kind != ObjectKind::Dict) error("_rebuild_tensor_v2: backward_hooks is not a dict");

    // The furthest element must lie inside the storage; the element count and the reach must
    // fit int64 so that every later size computation is exact.
    const std::optional<uint64_t> extent = tensor.storage_extent();
    if (!extent) error("_rebuild_tensor_v2: size/stride/offset overflow");
    if (*extent > static_cast<uint64_t>(tensor.storage.numel))
      error("storage '", tensor.storage.key, "' holds ", tensor.storage.numel, " elements but a tensor at offset ",
            tensor.storage_offset, " with its size and stride reaches element ", *extent - 1,
            " (storage too small for size/stride/offset)");
    tensors_.push_back(std::move(tensor));
    Object o;
    o.kind = ObjectKind::Tensor;
    o.ref = tensors_.size() - 1;
    return make(std::move(o));
  }

  TorchPickle convert_result(ObjectId id) {
    opcode_ = op::STOP;
    const Object& root = object(id);
    TorchPickle result;
    switch (root.kind) {
      case ObjectKind::Dict: {
        result.kind = TorchPickle::Kind::StateDict;
        std::unordered_set<std::string> seen;
        for (size_t i = 0; i < root.items.size(); i += 2) {
          const Object& key = object(root.items[i]);
          const Object& value = object(root.items[i + 1]);
          if (key.kind != ObjectKind::String) error("state_dict key is a ", kind_name(key.kind), ", not a str");
          if (value.kind != ObjectKind::Tensor)
            error("state_dict entry '", key.text, "' is a ", kind_name(value.kind), ", not a tensor");
          if (!seen.insert(key.text).second) error("state_dict key '", key.text, "' appears twice");
          result.state_dict.emplace_back(key.text, tensors_[value.ref]);
        }
        return result;
      }
      case ObjectKind::List:
        result.kind = TorchPickle::Kind::IntList;
        result.ints.reserve(root.items.size());
        for (size_t i = 0; i < root.items.size(); ++i) {
          const Object& item = object(root.items[i]);
          if (item.kind != ObjectKind::Int) error("list item ", i, " is a ", kind_name(item.kind), ", not an int");
          result.ints.push_back(item.integer);
        }
        return result;
      case ObjectKind::Tensor:
        result.kind = TorchPickle::Kind::Tensor;
        result.tensor = tensors_[root.ref];
        return result;
      default:
        error("top-level object is a ", kind_name(root.kind),
              "; expected a state_dict (dict of tensors), a list of ints or a tensor");
    }
  }

  std::string_view bytes_;
  const std::string& what_;
  PickleLimits limits_;
  size_t pos_ = 0;
  size_t opcode_offset_ = 0;
  uint8_t opcode_ = 0;
  std::vector<Object> objects_;
  std::vector<ObjectId> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, ObjectId> memo_;
  std::vector<TorchStorageRef> storages_;
  std::vector<TorchTensorRef> tensors_;
};

}  // namespace

TorchPickle read_torch_pickle(std::string_view bytes, const std::string& what, const PickleLimits& limits) {
  return Unpickler(bytes, what, limits).run();
}

}  // namespace specula::io
