"""Deterministic fake data for an org (``crmsandbox seed``): fast executemany inserts in big transactions."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from crmsandbox.metadata import INDUSTRY, LEAD_SOURCE, LEAD_STATUS, STAGES
from crmsandbox.store import Store
from crmsandbox.timeutil import format_dt

FIRST = ("Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Tim", "Radia",
         "Edsger", "Katherine", "John", "Hedy", "Donald", "Anita", "Vint", "Shafi", "Leslie", "Sophie", "Niklaus",
         "Joan", "Guido", "Mary", "Bjarne", "Karen", "Yukihiro", "Lynn", "James", "Elena", "Tomás", "Aiko",
         "Priya", "Chen", "Fatima", "Olga", "Kwame", "Ingrid", "Mateo")
LAST = ("Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen",
        "Berners-Lee", "Perlman", "Dijkstra", "Johnson", "McCarthy", "Lamarr", "Knuth", "Borg", "Cerf", "Goldwasser",
        "Lamport", "Wilson", "Wirth", "Clarke", "van Rossum", "Kenneth", "Stroustrup", "Spärck Jones", "Matsumoto",
        "Conway", "Gosling", "García", "Nakamura", "Patel", "Wei", "Haddad", "Ivanova", "Mensah", "Larsen", "Silva",
        "O'Brien")
COMPANY_A = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne",
             "Soylent", "Wonka", "Gringotts", "Oscorp", "Aperture", "Black Mesa", "Massive", "Pied Piper", "Dunder",
             "Prestige", "Nakatomi", "Monarch", "Virtucon", "Bluth", "Sterling")
COMPANY_B = ("Systems", "Industries", "Labs", "Holdings", "Analytics", "Logistics", "Software", "Partners",
             "Dynamics", "Networks", "Foods", "Energy", "Media", "Health", "Robotics")
TITLES = ("CEO", "CTO", "VP Marketing", "Marketing Manager", "Sales Director", "Engineer", "Analyst", "Buyer",
          "Head of Operations", "Product Manager", None)
CITIES = (("Berlin", "DE"), ("Paris", "FR"), ("London", "GB"), ("Austin", "US"), ("Toronto", "CA"),
          ("Sydney", "AU"), ("Tokyo", "JP"), ("Madrid", "ES"), ("Lagos", "NG"), ("São Paulo", "BR"))
CHUNK = 50_000
REBUILD_MIN_ROWS = 50_000


class Seeder:
    def __init__(self, store: Store, seed: int = 0):
        self.store = store
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC) - timedelta(minutes=1)
        self.seq = self._start_seq()
        self._stamp_pool: list[tuple[str, str]] = []
        self._rnd = self.rng.random

    def _start_seq(self) -> int:
        # makes emails unique across repeated seed runs into the same org
        n = 0
        for o in ("Lead", "Contact", "Account", "User"):
            n += self.store.db.execute(f'SELECT COALESCE(MAX(rowid),0) FROM "sobj_{o}"').fetchone()[0]
        return n

    def _owners(self) -> list[str]:
        rows = self.store.db.execute(
            'SELECT u."Id" FROM "sobj_User" u JOIN "sobj_Profile" p ON p."Id"=u."ProfileId" '
            'WHERE u."IsActive"=1 AND p."Name" != \'B2BMA Integration User\'').fetchall()
        return [r[0] for r in rows] or [self.store.admin_user_id()]

    def _stamps(self) -> tuple[str, str]:
        if not self._stamp_pool:
            pool = []
            for _ in range(8192):
                created = self.now - timedelta(seconds=self.rng.randint(3600, 180 * 86400),
                                               milliseconds=self.rng.randint(0, 999))
                span = int((self.now - created).total_seconds() * 1000)
                modified = created + timedelta(milliseconds=self.rng.randint(0, span))
                pool.append((format_dt(created), format_dt(modified)))
            self._stamp_pool = pool
        return self._stamp_pool[int(self.rng.random() * 8192)]

    def pick(self, seq):  # random.choice, 3x faster (hot loop)
        return seq[int(self._rnd() * len(seq))]

    def _person(self) -> tuple[str, str, str]:
        pick = self.pick
        first, last = pick(FIRST), pick(LAST)
        self.seq += 1
        local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
        local = local.encode("ascii", "ignore").decode() or "user"
        return first, last, f"{local}.{self.seq}@example.{pick(('com', 'org', 'net', 'io'))}"

    def _company(self) -> str:
        return f"{self.pick(COMPANY_A)} {self.pick(COMPANY_B)}"

    def _bulk(self, obj: str, n: int, make: Callable[[], dict[str, Any]],
              progress: Callable[[str, int], None] | None) -> list[str]:
        ids: list[str] = []
        store = self.store
        table = f"sobj_{obj}"
        existing = store.db.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{table}"').fetchone()[0]
        # a large load into a (relatively) small table: dropping the secondary indexes and building them once
        # afterwards (a sort) beats millions of random B-tree inserts. All in one transaction, so a server
        # reading the database meanwhile keeps its snapshot, indexes included.
        rebuild = n >= REBUILD_MIN_ROWS and n >= existing
        with store.transaction():
            indexes = store.db.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name=? "
                                       "AND sql IS NOT NULL", (table,)).fetchall() if rebuild else []
            for name, _ in indexes:
                store.db.execute(f'DROP INDEX "{name}"')
            done = 0
            while done < n:
                k = min(CHUNK, n - done)
                rows = [make() for _ in range(k)]
                ids += store.bulk_insert(obj, rows)
                done += k
                if progress:
                    progress(obj, k)
            for _, sql in indexes:
                store.db.execute(sql)
        return ids

    def users(self, n: int, progress=None) -> list[str]:
        out = []
        for _ in range(n):
            first, last, email = self._person()
            uname = email.split("@")[0] + "@users.crmsandbox.local"
            out.append(self.store.create_user(uname, None, first_name=first, last_name=last, email=email,
                                              profile="Standard User"))
            if progress:
                progress("User", 1)
        return out

    def run(self, *, leads: int = 0, contacts: int = 0, accounts: int = 0, person_accounts: int = 0,
            opportunities: int = 0, campaigns: int = 0, users: int = 0,
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
        # a seed is reproducible: trade durability for speed while it runs
        self.store.db.execute("PRAGMA synchronous=OFF")
        self.store.db.execute("PRAGMA cache_size=-262144")
        try:
            return self._run(leads=leads, contacts=contacts, accounts=accounts, person_accounts=person_accounts,
                             opportunities=opportunities, campaigns=campaigns, users=users, progress=progress)
        finally:
            self.store.analyze()
            self.store.db.execute("PRAGMA synchronous=NORMAL")
            self.store.db.execute("PRAGMA cache_size=-65536")

    def _run(self, *, leads: int, contacts: int, accounts: int, person_accounts: int, opportunities: int,
             campaigns: int, users: int, progress: Callable[[str, int], None] | None) -> dict[str, int]:
        r = self.rng
        pick = self.pick
        if users:
            self.users(users, progress)
        owners = self._owners()

        def common() -> dict[str, Any]:
            c, m = self._stamps()
            uid = pick(owners)
            return {"CreatedDate": c, "LastModifiedDate": m, "SystemModstamp": m, "OwnerId": uid,
                    "CreatedById": uid, "LastModifiedById": uid}

        rnd = self._rnd
        n_first, n_last, n_cities, n_owners = len(FIRST), len(LAST), len(CITIES), len(owners)
        n_a, n_b, n_titles, n_ind, n_src = len(COMPANY_A), len(COMPANY_B), len(TITLES), len(INDUSTRY), \
            len(LEAD_SOURCE)
        statuses = LEAD_STATUS[:2] + LEAD_STATUS[3:]
        sizes = (5, 20, 50, 200, 1000, 5000)
        domains = ("com", "org", "net", "io")
        locals_: dict[tuple[str, str], str] = {}
        stamps = self._stamps
        randint = r.randint

        def lead() -> dict[str, Any]:
            # the hot loop of big seeds: _person/common/_company/pick inlined (same random draws, same data)
            first = FIRST[int(rnd() * n_first)]
            last = LAST[int(rnd() * n_last)]
            self.seq += 1
            local = locals_.get((first, last))
            if local is None:
                local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
                local = locals_[(first, last)] = local.encode("ascii", "ignore").decode() or "user"
            email = f"{local}.{self.seq}@example.{domains[int(rnd() * 4)]}"
            city, country = CITIES[int(rnd() * n_cities)]
            c, m = stamps()
            uid = owners[int(rnd() * n_owners)]
            return {"CreatedDate": c, "LastModifiedDate": m, "SystemModstamp": m, "OwnerId": uid,
                    "CreatedById": uid, "LastModifiedById": uid,
                    "FirstName": first, "LastName": last, "Email": email,
                    "Company": f"{COMPANY_A[int(rnd() * n_a)]} {COMPANY_B[int(rnd() * n_b)]}",
                    "Title": TITLES[int(rnd() * n_titles)], "City": city, "Country": country,
                    "Phone": f"+1 555 {randint(1000000, 9999999)}", "Industry": INDUSTRY[int(rnd() * n_ind)],
                    "LeadSource": LEAD_SOURCE[int(rnd() * n_src)], "Status": statuses[int(rnd() * 3)],
                    "HasOptedOutOfEmail": 1 if rnd() < 0.05 else 0, "DoNotCall": 0,
                    "NumberOfEmployees": sizes[int(rnd() * 6)]}

        account_ids: list[str] = []

        def account() -> dict[str, Any]:
            d = common()
            city, country = pick(CITIES)
            d.update({"Name": self._company(), "Industry": pick(INDUSTRY), "BillingCity": city,
                      "BillingCountry": country, "Website": f"https://www.example{r.randint(1, 10**6)}.com",
                      "NumberOfEmployees": pick((5, 20, 50, 200, 1000, 5000)), "Type": "Prospect"})
            return d

        def contact() -> dict[str, Any]:
            first, last, email = self._person()
            city, country = pick(CITIES)
            d = common()
            d.update({"FirstName": first, "LastName": last, "Email": email, "Title": pick(TITLES),
                      "MailingCity": city, "MailingCountry": country,
                      "AccountId": pick(account_ids) if account_ids else None,
                      "HasOptedOutOfEmail": 1 if r.random() < 0.05 else 0})
            return d

        counts: dict[str, int] = {}
        if leads:
            counts["Lead"] = len(self._bulk("Lead", leads, lead, progress))
        if accounts:
            account_ids = self._bulk("Account", accounts, account, progress)
            counts["Account"] = len(account_ids)
        if not account_ids:
            account_ids = [x[0] for x in self.store.db.execute(
                'SELECT "Id" FROM "sobj_Account" WHERE "IsDeleted"=0 AND "IsPersonAccount"=0 LIMIT 10000')]
        if contacts:
            counts["Contact"] = len(self._bulk("Contact", contacts, contact, progress))
        if person_accounts:
            counts["PersonAccount"] = self._person_accounts(person_accounts, common, progress)
        if campaigns:
            def campaign() -> dict[str, Any]:
                d = common()
                start = (self.now - timedelta(days=r.randint(0, 200))).date()
                d.update({"Name": f"{pick(('Spring', 'Summer', 'Autumn', 'Winter'))} "
                                  f"{pick(('Webinar', 'Newsletter', 'Conference', 'Launch'))} {r.randint(1, 999)}",
                          "Type": pick(("Webinar", "Email", "Conference")), "Status": "In Progress",
                          "IsActive": 1, "StartDate": start.isoformat(),
                          "EndDate": (start + timedelta(days=30)).isoformat(),
                          "BudgetedCost": float(r.randint(1, 50) * 1000)})
                return d
            counts["Campaign"] = len(self._bulk("Campaign", campaigns, campaign, progress))
        if opportunities:
            def opp() -> dict[str, Any]:
                d = common()
                stage = pick(STAGES)
                d.update({"Name": f"{self._company()} deal", "StageName": stage,
                          "AccountId": pick(account_ids) if account_ids else None,
                          "CloseDate": (self.now + timedelta(days=r.randint(-60, 120))).date().isoformat(),
                          "Amount": float(r.randint(1, 500) * 100)})
                return d
            counts["Opportunity"] = len(self._bulk("Opportunity", opportunities, opp, progress))
        return counts

    def _person_accounts(self, n: int, common, progress) -> int:
        store = self.store
        made = 0
        while made < n:
            k = min(CHUNK, n - made)
            accts, people = [], []
            for _ in range(k):
                first, last, email = self._person()
                d = common()
                d.update({"FirstName": first, "LastName": last, "PersonEmail": email, "IsPersonAccount": 1,
                          "PersonHasOptedOutOfEmail": 0})
                accts.append(d)
            acct_ids = store.bulk_insert("Account", accts)
            for aid, a in zip(acct_ids, accts, strict=True):
                c = {k2: a[k2] for k2 in ("CreatedDate", "LastModifiedDate", "SystemModstamp", "OwnerId",
                                          "CreatedById", "LastModifiedById")}
                c.update({"FirstName": a["FirstName"], "LastName": a["LastName"], "Email": a["PersonEmail"],
                          "AccountId": aid, "IsPersonAccount": 1, "HasOptedOutOfEmail": 0})
                people.append(c)
            contact_ids = store.bulk_insert("Contact", people)
            with store.transaction():
                store.db.executemany('UPDATE "sobj_Account" SET "PersonContactId"=? WHERE "Id"=?',
                                     list(zip(contact_ids, acct_ids, strict=True)))
            made += k
            if progress:
                progress("PersonAccount", k)
        return made
