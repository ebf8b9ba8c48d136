"""Synthetic Chinese enterprise customers as billing, CRM, resource inventory and the bank hold them.

Deterministic by seed. Used by the MDM quality bench, by tests, and (later) by the telecom
simulators, which need the same customers to appear across systems with the ground truth known.

What it makes:

* **Companies** — 字号 (trade name) + industry, city and district (171 cities and 56 districts of
  the shipped division table: the places it had when the generator was written), legal form, a *valid* USCC (GB 32100, with a valid embedded GB 11714 organization code,
  old all-digit and new ``MA…`` style), main fixed-line number with the city's area code,
  sometimes a 400 number, a registered address, an e-mail domain, monthly revenue.
* **Hard negatives** (separate entities that look alike): the same 字号 + industry in another
  city; a name one character apart in the same city; branches (…分公司, …营业部) that carry
  their head office's USCC; companies of a group sharing the group's 400 number.
* **Named groups** (opt-in, ``named_group_rate``): a 集团 and member companies of the same 字号 in
  other cities — what a same-字号 company in another city looks like, except for the group
  structure some of their records carry: the member's billing account under the group's
  (``parent_billing_account``), the group's record as ``parent_source_id``, the group's e-mail
  domain.
* **Records** — each entity is held by 1–4 of ``billing``, ``crm``, ``resource``, ``bank`` with
  system-specific attributes and realistic noise: traditional characters, full-width forms,
  bracketed place vs place prefix vs no place, 有限责任公司 vs 有限公司, homophone / one-character
  typos, missing USCC, wrong check character, phone formats (with/without area code, +86,
  brackets), agents' mobile numbers shared across many customers, address abbreviations and
  missing addresses.
* **Ground truth** — entity id for every ``source_system:source_id``; branch → head links; group
  member → group links (``group_of``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

import opencc
from pypinyin import lazy_pinyin

from esbhub.mdm.standardize.codes import USCC_ALPHABET, make_uscc, uscc_check_char
from esbhub.mdm.standardize.divisions import Division, table
from esbhub.schemas.party import Party

SYSTEMS = ("billing", "crm", "resource", "bank")
AGENTS_FIXED_UP_TO = 20_000  # base companies; above, the number of agents grows with the set

TRADE_CHARS = ("华信达通宏远兴盛恒泰安康鑫源瑞丰德隆金鼎海天明辉永和中科创新东方腾飞嘉禾润泽博雅聚力万佳"
               "正大同仁广汇合众宝利锦绣长城凯旋星光银河蓝图智慧启航卓越英杰美好时代先锋")
INDUSTRIES = ("科技", "贸易", "物流", "建设", "电子", "通信", "实业", "医药", "信息技术", "网络科技", "软件",
              "机械", "化工", "食品", "传媒", "投资", "能源", "环保", "电气", "置业", "工程", "商贸", "数据",
              "光电", "材料", "汽车服务", "餐饮管理", "教育科技", "建材", "纺织")
ROADS = ("科技园路", "深南大道", "人民路", "解放路", "中山路", "建设路", "文三路", "长安街", "南京路", "学府路",
         "高新大道", "工业大道", "创业路", "滨海大道", "金融街", "光华路", "东风路", "新华路", "和平路", "迎宾大道")
HOMOPHONES = {"信": "新心欣", "华": "化骅", "达": "大", "通": "同桐", "宏": "鸿弘", "远": "源元", "兴": "星",
              "盛": "胜圣", "恒": "衡", "泰": "太", "鑫": "新欣", "瑞": "锐", "丰": "峰风", "德": "得", "隆": "龙",
              "金": "锦今", "海": "凯", "天": "添", "明": "名鸣", "辉": "晖", "永": "勇", "和": "合禾", "科": "可",
              "创": "闯", "东": "冬", "方": "芳", "腾": "腾", "飞": "菲", "嘉": "佳家", "博": "搏", "力": "立利",
              "万": "湾", "佳": "嘉家", "正": "政", "广": "光", "汇": "惠辉", "宝": "保", "利": "力立", "星": "兴",
              "光": "广", "智": "志", "启": "起", "航": "行", "英": "鹰", "美": "梅", "先": "仙", "锋": "峰丰"}
DISTRICT_FILL = ("高新区", "开发区", "新城区", "老城区", "经开区", "滨江区", "城南区", "城北区")
FAMILY = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文斌宇浩凯鹏飞俊峰"


# The generator's places: the 171 cities and 56 districts of the division table it was written against,
# before that table covered the whole country, in that table's order — a seed makes the same companies
# and records (and the quality bench the same numbers) as before the table grew. Names, short names and
# area codes come from the table, which has them unchanged.
_CITY_CODES = (
    "110100", "120100", "310100", "500100", "130100", "130200", "130300", "130400", "130500", "130600", "130700",
    "130800", "130900", "131000", "131100", "140100", "140200", "140400", "140700", "140800", "141000", "150100",
    "150200", "150400", "150600", "210100", "210200", "210300", "210400", "210600", "210700", "210800", "220100",
    "220200", "230100", "230200", "230600", "231000", "320100", "320200", "320300", "320400", "320500", "320600",
    "320700", "320800", "320900", "321000", "321100", "321200", "321300", "330100", "330200", "330300", "330400",
    "330500", "330600", "330700", "330800", "330900", "331000", "331100", "340100", "340200", "340300", "340500",
    "340800", "341000", "341200", "350100", "350200", "350300", "350500", "350600", "350800", "350900", "360100",
    "360200", "360400", "360700", "361100", "370100", "370200", "370300", "370400", "370500", "370600", "370700",
    "370800", "370900", "371000", "371100", "371300", "371400", "371500", "371600", "371700", "410100", "410200",
    "410300", "410400", "410500", "410700", "410800", "411000", "411300", "411400", "411500", "420100", "420200",
    "420300", "420500", "420600", "420800", "420900", "421000", "430100", "430200", "430300", "430400", "430600",
    "430700", "431000", "440100", "440200", "440300", "440400", "440500", "440600", "440700", "440800", "440900",
    "441200", "441300", "441400", "441900", "442000", "445100", "445200", "450100", "450200", "450300", "450500",
    "460100", "460200", "510100", "510300", "510400", "510500", "510600", "510700", "511100", "511300", "511500",
    "520100", "520300", "530100", "530300", "530400", "540100", "610100", "610300", "610400", "610600", "610800",
    "620100", "620500", "630100", "640100", "650100", "650200",
)
_DISTRICT_CODES = (
    "110101", "110102", "110105", "110106", "110108", "110114", "110115", "120101", "120116", "310101", "310104",
    "310105", "310106", "310107", "310110", "310112", "310115", "500103", "500112", "440103", "440104", "440105",
    "440106", "440111", "440112", "440113", "440303", "440304", "440305", "440306", "440307", "440309", "330102",
    "330105", "330106", "330108", "330110", "320102", "320104", "320105", "320106", "320505", "320506", "320508",
    "510104", "510105", "510107", "510108", "420102", "420106", "420111", "610102", "610113", "370102", "370202",
    "370212",
)


@lru_cache(maxsize=256)
def _district_choices(city_code: str) -> tuple[Division, ...]:
    """The districts the generator picks from in a city: each once per written form (full, short), longest
    form first, as the old table listed them."""
    t = table()
    pairs = [(form, d) for d in (t.by_code[c] for c in _DISTRICT_CODES) if d.city_code == city_code
             for form in dict.fromkeys((d.name, d.short))]
    pairs.sort(key=lambda p: -len(p[0]))
    return tuple(d for _, d in pairs)


@lru_cache(maxsize=1)
def _s2t() -> opencc.OpenCC:
    return opencc.OpenCC("s2t")


@dataclass
class Company:
    """One real-world entity (ground truth)."""

    entity_id: str
    trade: str
    industry: str
    city: Division
    district: str
    legal_form: str  # 有限公司 / 股份有限公司 / 集团有限公司
    uscc: str
    phone: str  # national format with area code, e.g. 0755-26001234
    service_phone: str | None
    street: str
    email_domain: str
    revenue: Decimal
    head_entity_id: str | None = None
    branch_label: str | None = None  # e.g. 南山分公司
    kind_of_negative: str | None = None  # twin_city / one_char / branch / group_member (a named group's)
    group_entity_id: str | None = None  # the group this company belongs to
    name_city: Division | None = None  # a branch's name carries its head office's city

    @property
    def place(self) -> Division:
        return self.name_city or self.city

    @property
    def core(self) -> str:
        return self.trade + self.industry

    @property
    def province(self) -> Division:
        return table().by_code[self.city.province_code]

    def legal_name(self) -> str:
        base = f"{self.place.name}{self.core}{self.legal_form}"
        return base + (self.branch_label or "")


@dataclass
class SynthDataset:
    companies: list[Company]
    records: list[Party]
    truth: dict[str, str]  # "system:id" -> entity_id
    branch_of: dict[str, str] = field(default_factory=dict)  # branch entity -> head entity
    group_of: dict[str, str] = field(default_factory=dict)  # group member entity -> group entity

    def key(self, p: Party) -> str:
        return f"{p.source_system}:{p.source_id}"

    def true_pairs(self) -> set[tuple[str, str]]:
        by: dict[str, list[str]] = {}
        for k, e in self.truth.items():
            by.setdefault(e, []).append(k)
        out: set[tuple[str, str]] = set()
        for ks in by.values():
            ks.sort()
            for i in range(len(ks)):
                for j in range(i + 1, len(ks)):
                    out.add((ks[i], ks[j]))
        return out


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        t = table()
        self.cities = [t.by_code[c] for c in _CITY_CODES]
        big = {"北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "苏州", "重庆", "天津", "西安"}
        self.city_weights = [8 if c.short in big else 1 for c in self.cities]
        self.used: set[tuple[str, str]] = set()
        self.used_uscc: set[str] = set()
        self.agents = [self.mobile() for _ in range(25)]
        self.n = 0

    def mobile(self, rng: random.Random | None = None) -> str:
        rng = rng or self.rng
        return rng.choice(("138", "139", "137", "135", "186", "189", "133", "177")) + "".join(
            rng.choice("0123456789") for _ in range(8))

    def trade(self) -> str:
        k = 2 if self.rng.random() < 0.8 else 3
        return "".join(self.rng.choice(TRADE_CHARS) for _ in range(k))

    def city(self) -> Division:
        return self.rng.choices(self.cities, weights=self.city_weights)[0]

    def district(self, city: Division) -> tuple[str, str]:
        forms = _district_choices(city.code)
        if forms and self.rng.random() < 0.85:
            d = self.rng.choice(forms)
            return d.name, d.code
        return self.rng.choice(DISTRICT_FILL), city.code

    def uscc(self, division: str) -> str:
        while True:
            if self.rng.random() < 0.5:
                body = "MA" + "".join(self.rng.choice(USCC_ALPHABET[:10] + "ABCDEFGHJKLMNPQRTUWXY") for _ in range(6))
            else:
                body = "".join(self.rng.choice("0123456789") for _ in range(8))
            code = make_uscc("9", "1", division, body)
            if code not in self.used_uscc:
                self.used_uscc.add(code)
                return code

    def company(self, *, trade: str | None = None, industry: str | None = None, city: Division | None = None,
                kind_of_negative: str | None = None) -> Company:
        for _ in range(1000):
            tr = trade or self.trade()
            ind = industry or self.rng.choice(INDUSTRIES)
            c = city or self.city()
            if (tr + ind, c.code) not in self.used:
                break
            trade = industry = None
        self.used.add((tr + ind, c.code))
        dist, dcode = self.district(c)
        self.n += 1
        area = c.area_code or "0" + str(self.rng.randint(300, 999))
        phone = f"{area}-{self.rng.randint(2, 8)}{self.rng.randint(0, 9_999_999):07d}"
        legal = self.rng.choices(("有限公司", "股份有限公司", "集团有限公司"), weights=(80, 14, 6))[0]
        domain = "".join(lazy_pinyin(tr)) + self.rng.choice((".com", ".com.cn", ".cn", ".net"))
        street = f"{dist}{self.rng.choice(ROADS)}{self.rng.randint(1, 999)}号"
        if self.rng.random() < 0.4:
            street += f"{self.rng.choice('ABCDEFG')}座{self.rng.randint(1, 30)}楼"
        svc = f"400-{self.rng.randint(100, 999)}-{self.rng.randint(1000, 9999)}" if self.rng.random() < 0.1 else None
        return Company(
            entity_id=f"E{self.n:07d}", trade=tr, industry=ind, city=c, district=dist, legal_form=legal,
            uscc=self.uscc(dcode), phone=phone, service_phone=svc, street=street, email_domain=domain,
            revenue=Decimal(self.rng.randint(1_000, 2_000_000)), kind_of_negative=kind_of_negative,
        )

    def one_char_apart(self, co: Company) -> str:
        chars = list(co.trade)
        i = self.rng.randrange(len(chars))
        choices = [c for c in TRADE_CHARS if c != chars[i] and c not in HOMOPHONES.get(chars[i], "")]
        chars[i] = self.rng.choice(choices)
        return "".join(chars)


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _noisy_name(g: _Gen, co: Company, noise: float) -> str:
    rng = g.rng
    trade = co.trade
    if rng.random() < noise * 0.12:  # homophone typo in the trade name
        i = rng.randrange(len(trade))
        alts = HOMOPHONES.get(trade[i])
        if alts:
            trade = trade[:i] + rng.choice(alts) + trade[i + 1:]
    legal = co.legal_form
    if legal == "有限公司" and rng.random() < noise * 0.5:
        legal = "有限责任公司"
    elif legal == "集团有限公司" and rng.random() < noise * 0.5:
        legal = rng.choice(("(集团)有限公司", "集团有限责任公司"))
    elif legal == "股份有限公司" and rng.random() < noise * 0.3:
        legal = "股份公司"
    r = rng.random()
    core = trade + co.industry
    place = co.place
    prov = table().by_code[place.province_code]
    if r < 0.55:
        name = f"{place.name}{core}{legal}"
    elif r < 0.55 + noise * 0.6:
        name = f"{core}({place.short}){legal}"
    elif r < 0.55 + noise * 0.9:
        name = f"{place.short}{core}{legal}"
    elif prov.short != place.short:
        name = f"{prov.name}{place.name}{core}{legal}"
    else:
        name = f"{place.name}{core}{legal}"
    if co.branch_label:
        label = co.branch_label
        if rng.random() < noise * 0.3 and label.endswith("分公司") and not label.startswith(co.city.short):
            label = label.replace("区", "", 1) if "区" in label else label
        name += label
    if rng.random() < noise * 0.25:
        name = _s2t().convert(name)
    if rng.random() < noise * 0.25:
        name = _fullwidth(name.replace("(", "(").replace(")", ")"))
        name = name.replace("(", "（").replace(")", "）")
    if rng.random() < noise * 0.1:
        i = rng.randrange(1, len(name))
        name = name[:i] + " " + name[i:]
    return name


def _noisy_phone(g: _Gen, phone: str, noise: float) -> str:
    rng = g.rng
    area, local = phone.split("-")
    r = rng.random()
    if r < 1 - noise:
        return phone
    return rng.choice((f"({area}){local}", f"{area}{local}", f"+86 {area[1:]} {local}", local,
                       f"{area} {local[:4]} {local[4:]}", f"0086-{area[1:]}-{local}"))


def _noisy_address(g: _Gen, co: Company, noise: float) -> str:
    rng = g.rng
    prov, city = co.province, co.city
    muni = prov.short == city.short
    r = rng.random()
    dist = co.district
    street = co.street
    if r < 1 - noise:
        return (f"{prov.name}" if not muni else "") + f"{city.name}{street}"
    choice = rng.randrange(4)
    if choice == 0:
        return f"{city.name}{street}"
    if choice == 1:
        return f"{city.short}{street.replace(dist, dist.rstrip('区'), 1) if dist.endswith('区') and len(dist) > 2 else street}"
    if choice == 2:
        return f"{prov.short}{city.short}{street}"
    return _s2t().convert(f"{city.name}{street}")


def _records_for(g: _Gen, co: Company, noise: float, counters: dict[str, int], head_ids: dict[tuple[str, str], str],
                 group_phone: str | None) -> Iterator[tuple[Party, str]]:
    rng = g.rng
    systems = [s for s in SYSTEMS if rng.random() < 0.7] or [rng.choice(SYSTEMS)]
    for sys in systems:
        counters[sys] += 1
        sid = f"{sys[:3].upper()}{counters[sys]:08d}"
        name = _noisy_name(g, co, noise)
        uscc: str | None = co.uscc
        u_missing = {"billing": 0.35, "crm": 0.15, "resource": 0.5, "bank": 0.3}[sys]
        if rng.random() < u_missing:
            uscc = None
        elif rng.random() < noise * 0.06:  # wrong check character
            bad = rng.choice([c for c in USCC_ALPHABET if c != uscc_check_char(co.uscc[:17])])
            uscc = co.uscc[:17] + bad
        elif rng.random() < noise * 0.03:  # one character mistyped in the body
            i = rng.randrange(8, 17)
            uscc = co.uscc[:i] + rng.choice([c for c in "0123456789" if c != co.uscc[i]]) + co.uscc[i + 1:]
        phones: list[dict[str, str]] = []
        if rng.random() < 0.85:
            phones.append({"kind": "main", "number": _noisy_phone(g, co.phone, noise)})
        if co.service_phone and rng.random() < 0.5:
            phones.append({"kind": "service", "number": co.service_phone})
        if group_phone and rng.random() < 0.5:
            phones.append({"kind": "main", "number": group_phone})
        if sys in ("crm", "resource") and rng.random() < 0.12:
            phones.append({"kind": "mobile", "number": rng.choice(g.agents)})
        addresses = []
        if rng.random() < 0.88:
            addresses.append({"kind": "registered" if sys != "billing" else "billing",
                              "text": _noisy_address(g, co, noise)})
        attrs: dict[str, object] = {}
        emails: list[str] = []
        if sys == "billing":
            attrs = {"billing_account": f"BA{counters[sys]:09d}", "monthly_revenue": co.revenue}
        elif sys == "crm":
            attrs = {"industry": co.industry, "account_manager": rng.choice(FAMILY) + rng.choice(GIVEN)}
            if rng.random() < 0.6:
                emails = [rng.choice(("info", "it", "finance", "admin")) + "@" + co.email_domain]
        elif sys == "resource":
            attrs = {"circuit_ids": [f"CIR-{co.city.area_code or '0000'}-{rng.randint(0, 999999):06d}"
                                     for _ in range(rng.randint(1, 3))]}
        else:
            attrs = {"bank_account": "".join(rng.choice("0123456789") for _ in range(19)),
                     "bank_name": rng.choice(("中国工商银行", "中国建设银行", "招商银行", "中国银行")) + co.city.short
                     + "分行"}
        parent = head_ids.get((sys, co.head_entity_id)) if co.head_entity_id else None
        if co.kind_of_negative == "group_member":  # a named group's member: the structure its records carry
            group = co.group_entity_id
            if sys == "billing" and ("billing", group) in head_ids and rng.random() < 0.5:
                attrs["parent_billing_account"] = f"BA{int(head_ids[('billing', group)][3:]):09d}"
            if (sys, group) in head_ids and rng.random() < 0.3:
                parent = head_ids[(sys, group)]
        party = Party(
            kind="organization", source_system=sys, source_id=sid, name=name[:500], uscc=uscc,
            province=co.province.short if rng.random() < 0.3 else None,
            city=co.city.short if rng.random() < 0.5 else None,
            addresses=addresses, phones=phones, emails=emails, attributes=attrs, parent_source_id=parent,
        )
        head_ids[(sys, co.entity_id)] = sid
        yield party, co.entity_id


def generate(n_companies: int = 1000, seed: int = 0, *, noise: float = 0.5, twin_city_rate: float = 0.08,
             one_char_rate: float = 0.06, branch_rate: float = 0.08, group_rate: float = 0.03,
             named_group_rate: float = 0.0) -> SynthDataset:
    """Generate ``n_companies`` base companies plus hard-negative look-alikes, and their records.

    ``noise`` (0..1) scales every kind of record noise. Deterministic for a given seed and arguments.
    ``named_group_rate`` is off by default: a set made without it is the set made before it existed.
    """
    companies, branch_of, recs = _plan(n_companies, seed, noise=noise, twin_city_rate=twin_city_rate,
                                       one_char_rate=one_char_rate, branch_rate=branch_rate, group_rate=group_rate,
                                       named_group_rate=named_group_rate)
    records: list[Party] = []
    truth: dict[str, str] = {}
    for party, eid in recs:
        records.append(party)
        truth[f"{party.source_system}:{party.source_id}"] = eid
    group_of = {c.entity_id: c.group_entity_id for c in companies if c.group_entity_id}
    return SynthDataset(companies=companies, records=records, truth=truth, branch_of=branch_of, group_of=group_of)


def iter_records(n_companies: int = 1000, seed: int = 0, **kw: float) -> Iterator[tuple[Party, str]]:
    """The records of :func:`generate` (same arguments, same records, same order) with each one's
    entity id, made as they are taken: a million records need not all be in memory at once."""
    _companies, _branch_of, recs = _plan(n_companies, seed, **kw)
    yield from recs


def _plan(n_companies: int, seed: int, *, noise: float = 0.5, twin_city_rate: float = 0.08,
          one_char_rate: float = 0.06, branch_rate: float = 0.08, group_rate: float = 0.03,
          named_group_rate: float = 0.0) -> tuple[list[Company], dict[str, str], Iterator[tuple[Party, str]]]:
    """The companies (made now) and a generator of their records (made when taken)."""
    g = _Gen(seed)
    rng = g.rng
    if n_companies > AGENTS_FIXED_UP_TO:
        # one account manager per ~200 customers, as an operator staffs them: 25 agents' phones
        # spread over a million records would be shared by thousands each. Drawn from a second
        # stream, so sets up to AGENTS_FIXED_UP_TO companies stay exactly as they were.
        extra = random.Random(seed * 7919 + 1)
        g.agents += [g.mobile(extra) for _ in range(n_companies // 200 - len(g.agents))]
    companies: list[Company] = []
    branch_labels: set[tuple[str, str]] = set()  # (head entity, label): one branch per label
    branch_of: dict[str, str] = {}
    group_phone: dict[str, str] = {}
    for _ in range(n_companies):
        co = g.company()
        companies.append(co)
        r = rng.random()
        if r < twin_city_rate:
            other = g.city()
            if other.code != co.city.code:
                companies.append(g.company(trade=co.trade, industry=co.industry, city=other, kind_of_negative="twin_city"))
        elif r < twin_city_rate + one_char_rate:
            companies.append(g.company(trade=g.one_char_apart(co), industry=co.industry, city=co.city,
                                       kind_of_negative="one_char"))
        elif r < twin_city_rate + one_char_rate + branch_rate:
            for _b in range(rng.randint(1, 3)):
                other_city = g.city() if rng.random() < 0.5 else co.city
                br = g.company(city=other_city, kind_of_negative="branch")
                br.trade, br.industry, br.legal_form, br.uscc = co.trade, co.industry, co.legal_form, co.uscc
                br.name_city = co.city
                if other_city.code != co.city.code:
                    label = other_city.short + rng.choice(("分公司", "分公司", "办事处"))
                else:
                    label = br.district + rng.choice(("分公司", "营业部"))
                if (co.entity_id, label) in branch_labels:
                    continue
                branch_labels.add((co.entity_id, label))
                br.branch_label = label
                br.head_entity_id = co.entity_id
                companies.append(br)
                branch_of[br.entity_id] = co.entity_id
        elif r < twin_city_rate + one_char_rate + branch_rate + group_rate:
            gp = f"400-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
            group_phone[co.entity_id] = gp
            for _m in range(rng.randint(2, 4)):
                member = g.company()
                group_phone[member.entity_id] = gp
                member.group_entity_id = co.entity_id
                companies.append(member)
        elif r < twin_city_rate + one_char_rate + branch_rate + group_rate + named_group_rate:
            co.legal_form = "集团有限公司"
            for _m in range(rng.randint(1, 3)):
                member = g.company(trade=co.trade, industry=co.industry, city=g.city(), kind_of_negative="group_member")
                if member.core != co.core or member.city.code == co.city.code:
                    continue  # the 字号 is taken in that city: no member there
                member.legal_form = rng.choice(("有限公司", "有限公司", "股份有限公司"))
                member.group_entity_id = co.entity_id
                if rng.random() < 0.5:
                    member.email_domain = co.email_domain
                companies.append(member)

    def records() -> Iterator[tuple[Party, str]]:
        counters = dict.fromkeys(SYSTEMS, 0)
        head_ids: dict[tuple[str, str], str] = {}
        for co in companies:
            yield from _records_for(g, co, noise, counters, head_ids, group_phone.get(co.entity_id))

    return companies, branch_of, records()
