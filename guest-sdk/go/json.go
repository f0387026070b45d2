package plugin

// JSON that round-trips like serde_json in the Rust SDK: objects keep their
// field order (a repeated key keeps its first position and its last value),
// strings are written with the same escapes, and numbers are re-formatted by
// serde_json's rules (integers exact within i64/u64; anything else as the
// shortest f64, as serde_json writes it: 1.5, 100000.0, 1e+16, 1.2e-7).
// So the same input gives byte-for-byte the same output as a Rust plugin.

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Kind of a JSON value.
type Kind uint8

const (
	Null Kind = iota
	Bool
	Number
	String
	Array
	ObjectKind
)

// Value is a parsed JSON value.
type Value struct {
	Kind   Kind
	Bool   bool
	Number string // canonical text, as serde_json would write it
	Str    string
	Arr    []Value
	Obj    *Object
}

// Str makes a string value.
func Str(s string) Value { return Value{Kind: String, Str: s} }

// Member is one field of an object.
type Member struct {
	Key   string
	Value Value
}

// Object is a JSON object in field order.
type Object struct{ Members []Member }

// Get returns the field's value.
func (o *Object) Get(key string) (Value, bool) {
	for _, m := range o.Members {
		if m.Key == key {
			return m.Value, true
		}
	}
	return Value{}, false
}

// Set overwrites the field in place, or appends it.
func (o *Object) Set(key string, v Value) {
	for i := range o.Members {
		if o.Members[i].Key == key {
			o.Members[i].Value = v
			return
		}
	}
	o.Members = append(o.Members, Member{key, v})
}

// ParseJSON parses one JSON value (surrounding whitespace allowed).
func ParseJSON(data []byte) (Value, error) {
	p := &parser{data: data}
	p.ws()
	v, err := p.value(0)
	if err != nil {
		return Value{}, err
	}
	p.ws()
	if p.pos != len(p.data) {
		return Value{}, p.errorf("trailing characters")
	}
	return v, nil
}

type parser struct {
	data []byte
	pos  int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%s at byte %d", fmt.Sprintf(format, args...), p.pos)
}

func (p *parser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) lit(word string, v Value) (Value, error) {
	if !strings.HasPrefix(string(p.data[p.pos:min(len(p.data), p.pos+len(word))]), word) {
		return Value{}, p.errorf("expected value")
	}
	p.pos += len(word)
	return v, nil
}

// maxOpen is serde_json's recursion limit: the 128th nested array or
// object is refused.
const maxOpen = 127

// value parses the value at p.pos, inside `depth` open arrays and objects.
func (p *parser) value(depth int) (Value, error) {
	if p.pos >= len(p.data) {
		return Value{}, p.errorf("EOF while parsing a value")
	}
	if c := p.data[p.pos]; (c == '[' || c == '{') && depth >= maxOpen {
		return Value{}, p.errorf("recursion limit exceeded")
	}
	switch c := p.data[p.pos]; {
	case c == 'n':
		return p.lit("null", Value{Kind: Null})
	case c == 't':
		return p.lit("true", Value{Kind: Bool, Bool: true})
	case c == 'f':
		return p.lit("false", Value{Kind: Bool})
	case c == '"':
		s, err := p.str()
		return Value{Kind: String, Str: s}, err
	case c == '[':
		p.pos++
		var arr []Value
		p.ws()
		if p.pos < len(p.data) && p.data[p.pos] == ']' {
			p.pos++
			return Value{Kind: Array, Arr: arr}, nil
		}
		for {
			p.ws()
			v, err := p.value(depth + 1)
			if err != nil {
				return Value{}, err
			}
			arr = append(arr, v)
			p.ws()
			if p.pos >= len(p.data) {
				return Value{}, p.errorf("EOF while parsing a list")
			}
			if p.data[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.data[p.pos] == ']' {
				p.pos++
				return Value{Kind: Array, Arr: arr}, nil
			}
			return Value{}, p.errorf("expected `,` or `]`")
		}
	case c == '{':
		p.pos++
		obj := &Object{}
		p.ws()
		if p.pos < len(p.data) && p.data[p.pos] == '}' {
			p.pos++
			return Value{Kind: ObjectKind, Obj: obj}, nil
		}
		for {
			p.ws()
			if p.pos >= len(p.data) || p.data[p.pos] != '"' {
				return Value{}, p.errorf("key must be a string")
			}
			k, err := p.str()
			if err != nil {
				return Value{}, err
			}
			p.ws()
			if p.pos >= len(p.data) || p.data[p.pos] != ':' {
				return Value{}, p.errorf("expected `:`")
			}
			p.pos++
			p.ws()
			v, err := p.value(depth + 1)
			if err != nil {
				return Value{}, err
			}
			obj.Set(k, v)
			p.ws()
			if p.pos >= len(p.data) {
				return Value{}, p.errorf("EOF while parsing an object")
			}
			if p.data[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.data[p.pos] == '}' {
				p.pos++
				return Value{Kind: ObjectKind, Obj: obj}, nil
			}
			return Value{}, p.errorf("expected `,` or `}`")
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return Value{}, p.errorf("expected value")
	}
}

func (p *parser) hex4() (rune, error) {
	if p.pos+4 > len(p.data) {
		return 0, p.errorf("EOF while parsing a string")
	}
	n, err := strconv.ParseUint(string(p.data[p.pos:p.pos+4]), 16, 32)
	if err != nil {
		return 0, p.errorf("invalid escape")
	}
	p.pos += 4
	return rune(n), nil
}

func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for {
		if p.pos >= len(p.data) {
			return "", p.errorf("EOF while parsing a string")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			return b.String(), nil
		case c < 0x20:
			return "", p.errorf("control character (\\u0000-\\u001F) found while parsing a string")
		case c == '\\':
			p.pos++
			if p.pos >= len(p.data) {
				return "", p.errorf("EOF while parsing a string")
			}
			e := p.data[p.pos]
			p.pos++
			switch e {
			case '"', '\\', '/':
				b.WriteByte(e)
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				r, err := p.hex4()
				if err != nil {
					return "", err
				}
				if utf16.IsSurrogate(r) {
					if r >= 0xdc00 || p.pos+2 > len(p.data) || p.data[p.pos] != '\\' || p.data[p.pos+1] != 'u' {
						return "", p.errorf("lone leading surrogate in hex escape")
					}
					p.pos += 2
					r2, err := p.hex4()
					if err != nil {
						return "", err
					}
					r = utf16.DecodeRune(r, r2)
					if r == utf8.RuneError {
						return "", p.errorf("lone leading surrogate in hex escape")
					}
				}
				b.WriteRune(r)
			default:
				return "", p.errorf("invalid escape")
			}
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return "", p.errorf("invalid unicode code point")
			}
			b.Write(p.data[p.pos : p.pos+size])
			p.pos += size
		}
	}
}

func (p *parser) number() (Value, error) {
	start := p.pos
	digits := func() int {
		n := 0
		for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.data[p.pos] == '-' {
		p.pos++
	}
	intStart := p.pos
	if digits() == 0 {
		return Value{}, p.errorf("invalid number")
	}
	if p.data[intStart] == '0' && p.pos-intStart > 1 {
		return Value{}, p.errorf("invalid number")
	}
	isFloat := false
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		isFloat = true
		if digits() == 0 {
			return Value{}, p.errorf("invalid number")
		}
	}
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		p.pos++
		isFloat = true
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return Value{}, p.errorf("invalid number")
		}
	}
	text := string(p.data[start:p.pos])
	if !isFloat {
		if text[0] == '-' {
			if n, err := strconv.ParseInt(text, 10, 64); err == nil && n != 0 {
				return Value{Kind: Number, Number: strconv.FormatInt(n, 10)}, nil
			}
		} else if n, err := strconv.ParseUint(text, 10, 64); err == nil {
			return Value{Kind: Number, Number: strconv.FormatUint(n, 10)}, nil
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil && math.IsInf(f, 0) {
		return Value{}, p.errorf("number out of range")
	}
	return Value{Kind: Number, Number: FormatFloat(f)}, nil
}

// FormatFloat writes f as serde_json does: the shortest digits
// that round-trip, in plain notation for magnitudes 1e-5..1e16, otherwise
// with an exponent; integral values get ".0".
func FormatFloat(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	sign := ""
	if f < 0 {
		sign = "-"
		f = -f
	}
	// "d.dddde±XX": the shortest round-trip digits and the exponent.
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, expText, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, _ := strconv.Atoi(expText)
	length := len(digits)
	kk := exp + 1 // the decimal point sits after kk digits
	k := kk - length
	var s string
	switch {
	case k >= 0 && kk <= 16:
		s = digits + strings.Repeat("0", k) + ".0"
	case kk > 0 && kk <= 16:
		s = digits[:kk] + "." + digits[kk:]
	case kk > -5 && kk <= 0:
		s = "0." + strings.Repeat("0", -kk) + digits
	default:
		exp := "e" + strconv.Itoa(kk-1)
		if kk-1 >= 0 {
			exp = "e+" + strconv.Itoa(kk-1)
		}
		if length == 1 {
			s = digits + exp
		} else {
			s = digits[:1] + "." + digits[1:] + exp
		}
	}
	return sign + s
}

// AppendJSON writes v as compact JSON, the way serde_json does.
func AppendJSON(buf []byte, v Value) []byte {
	switch v.Kind {
	case Null:
		return append(buf, "null"...)
	case Bool:
		if v.Bool {
			return append(buf, "true"...)
		}
		return append(buf, "false"...)
	case Number:
		return append(buf, v.Number...)
	case String:
		return appendString(buf, v.Str)
	case Array:
		buf = append(buf, '[')
		for i, x := range v.Arr {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = AppendJSON(buf, x)
		}
		return append(buf, ']')
	default:
		buf = append(buf, '{')
		for i, m := range v.Obj.Members {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendString(buf, m.Key)
			buf = append(buf, ':')
			buf = AppendJSON(buf, m.Value)
		}
		return append(buf, '}')
	}
}

const hexDigits = "0123456789abcdef"

func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			buf = append(buf, '\\', '"')
		case c == '\\':
			buf = append(buf, '\\', '\\')
		case c == '\b':
			buf = append(buf, '\\', 'b')
		case c == '\f':
			buf = append(buf, '\\', 'f')
		case c == '\n':
			buf = append(buf, '\\', 'n')
		case c == '\r':
			buf = append(buf, '\\', 'r')
		case c == '\t':
			buf = append(buf, '\\', 't')
		case c < 0x20:
			buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
		default:
			buf = append(buf, c)
		}
	}
	return append(buf, '"')
}
